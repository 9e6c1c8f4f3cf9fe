"""Where tensors live: the device this rank computes on, and the tensors its collectives take.

A job uses one backend, chosen with its device by `initialize()`: NCCL with each rank's GPU, or gloo
on the CPU. We do not run a mixed `cpu:gloo,cuda:nccl` group: megatron-core creates its subgroups from
the default backend (with NCCL options), so one backend is what its own collectives are tested with,
and the reductions we run ourselves carry a few numbers, which cost nothing to copy to the device and
back. So every tensor given to a collective is on `compute_device()`: model tensors are already there,
and host numbers go through `all_reduce_host`, `broadcast_host` and `all_gather_host`. Batches are
built on the host and moved with `to_device` by the forward step that feeds them to the model.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch
import torch.distributed as dist
from megatron.core.packed_seq_params import PackedSeqParams

T = TypeVar("T")
_device: torch.device | None = None


def default_device() -> torch.device:
    """This process's current GPU when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def compute_device() -> torch.device:
    """The device models, batches and collective tensors of this rank live on."""
    return _device if _device is not None else default_device()


def use_device(device: torch.device | str | None) -> torch.device | None:
    """Set the device `compute_device()` names (None: the default); returns the previous setting."""
    global _device
    previous, _device = _device, None if device is None else torch.device(device)
    return previous


def to_device(value: T, device: torch.device | None = None) -> T:
    """`value` with every tensor in it moved to `device` (default: `compute_device()`): tensors,
    `PackedSeqParams` fields, and the dicts, lists and tuples holding them. Other values are kept."""
    device = device or compute_device()
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, PackedSeqParams):
        moved = {
            field.name: to_device(getattr(value, field.name), device) for field in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **moved)
    if isinstance(value, dict):
        return type(value)((key, to_device(item, device)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(to_device(item, device) for item in value)
    return value


def all_reduce_host(
    values: torch.Tensor, group: dist.ProcessGroup | None = None, op: dist.ReduceOp = dist.ReduceOp.SUM
) -> torch.Tensor:
    """`values` (a host tensor) reduced over `group`, on the host."""
    on_device = values.to(compute_device())
    dist.all_reduce(on_device, op=op, group=group)
    return on_device.cpu()


def broadcast_host(values: torch.Tensor, src: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Rank `src`'s `values` (a host tensor) on every rank of `group`, on the host."""
    on_device = values.to(compute_device())
    dist.broadcast(on_device, src=src, group=group)
    return on_device.cpu()


def all_gather_host(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> list[torch.Tensor]:
    """Every rank's `values` (a host tensor of the same shape everywhere), in rank order, on the host."""
    on_device = values.to(compute_device())
    gathered = [torch.empty_like(on_device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, on_device, group=group)
    return [tensor.cpu() for tensor in gathered]
