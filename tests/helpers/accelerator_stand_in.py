"""A GPU stand-in for CPU tests of device placement: the `meta` device plays the accelerator.

Inside `accelerator_stand_in()`, the rank's compute device is `meta` (models, batches and collective
tensors belong there, as they belong on the GPU under NCCL), megatron-core's "cuda" means `meta`, and:
- an op that mixes a `meta` tensor with a host tensor fails, as a CUDA op does with a CPU tensor
  (0-dim host scalars and host index tensors are allowed, as CUDA allows them; copies between the two
  are moves, and allowed);
- every tensor collective must be given `meta` tensors, as NCCL must be given CUDA tensors: one on the
  host is recorded as a violation (the collective itself is skipped: there are no values to reduce);
- reading a `meta` tensor back to the host (`.item()`, `.cpu()`) gives the values it was moved with
  when it came from the host unchanged (packing boundaries, token ids), zeros otherwise: the numbers
  are meaningless, the placement is what is tested.
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.distributed import param_and_grad_buffer
from megatron.core.optimizer import clip_grads
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from xr_nemo.distributed import cpu_compat
from xr_nemo.distributed.devices import use_device

aten = torch.ops.aten
ACCELERATOR = torch.device("meta")
TENSOR_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "all_to_all_single",
    "_all_gather_base",
    "_reduce_scatter_base",
    "send",
    "recv",
    "isend",
    "irecv",
)
# Ops CUDA runs with host index tensors.
HOST_INDICES_ALLOWED = {aten.index.Tensor, aten.index_put_.default, aten._index_put_impl_.default}


class DevicePlacementError(AssertionError):
    pass


def _is_host(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


class _Shadows:
    """Host values of `meta` tensors that were moved from the host."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def keep(self, on_meta: torch.Tensor, host: torch.Tensor) -> None:
        self._values[id(on_meta)] = (weakref.ref(on_meta), host.detach().clone())

    def of(self, on_meta: torch.Tensor) -> torch.Tensor:
        ref, host = self._values.get(id(on_meta), (None, None))
        if ref is not None and ref() is on_meta and host.shape == on_meta.shape:
            return host.to(on_meta.dtype)
        return torch.zeros(on_meta.shape, dtype=on_meta.dtype)


class _PlacementMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shadows = _Shadows()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].is_meta:
            return self.shadows.of(args[0]).item()
        if func is aten._to_copy.default:
            return self._to_copy(func, args, kwargs)
        if func is aten.copy_.default:
            return self._copy(func, args, kwargs)
        self._check_placement(func, args, kwargs)
        return func(*args, **kwargs)

    def _to_copy(self, func, args, kwargs):
        source, target = args[0], torch.device(kwargs.get("device") or args[0].device)
        if source.is_meta and target.type == "cpu":
            return self.shadows.of(source).to(kwargs.get("dtype") or source.dtype)
        result = func(*args, **kwargs)
        if _is_host(source) and result.is_meta:
            self.shadows.keep(result, source.to(result.dtype))
        return result

    def _copy(self, func, args, kwargs):
        target, source = args[0], args[1]
        if _is_host(target) and source.is_meta:
            return target.copy_(self.shadows.of(source))
        result = func(*args, **kwargs)
        if target.is_meta and _is_host(source):
            self.shadows.keep(target, source.expand_as(target).to(target.dtype))
        return result

    @staticmethod
    def _check_placement(func, args, kwargs) -> None:
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not any(t.is_meta for t in tensors):
            return
        host = [t for t in tensors if _is_host(t) and t.dim() > 0]
        if func in HOST_INDICES_ALLOWED:
            indices = [index for index in args[1] if index is not None]
            host = [t for t in host if not any(t is index for index in indices)]
        if host:
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in host)
            raise DevicePlacementError(f"{func} mixes accelerator tensors with host tensors: {shapes}")


@dataclass
class CollectiveRecord:
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


class _DoneWork:
    works: tuple = ()

    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


@contextlib.contextmanager
def _coalescing_manager(*args: Any, **kwargs: Any) -> Iterator[_DoneWork]:
    """The collectives inside are recorded one by one; there is nothing to flush."""
    yield _DoneWork()


def _recorded(name: str, record: CollectiveRecord):
    def collective(*args: Any, **kwargs: Any) -> Any:
        tensors = _tensors((args, kwargs))
        record.calls.append((name, [str(t.device) for t in tensors]))
        wrong = [t for t in tensors if t.device != ACCELERATOR]
        if wrong:
            caller = "".join(traceback.format_stack(limit=6)[:-1])
            record.violations.append(
                f"dist.{name} given {', '.join(f'{tuple(t.shape)} on {t.device}' for t in wrong)}; "
                f"NCCL takes only accelerator tensors. Called from:\n{caller}"
            )
        return _DoneWork() if kwargs.get("async_op") else None

    return collective


def _l2_norm_on_device(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Apex's fused L2 norm as it runs on a GPU: the norm stays on the device. (megatron-core's host
    fallback builds it with `torch.tensor(list of tensors)`, which reads values past any dispatch mode.)"""
    norms = torch.stack([tensor.float().norm() for tensors in tensor_lists for tensor in tensors])
    return norms.norm().reshape(1), None


@contextlib.contextmanager
def accelerator_stand_in(monkeypatch) -> Iterator[CollectiveRecord]:
    """Run the body as if on a GPU whose device is `meta` (see the module docstring); yields the record
    of tensor collectives. `xr_nemo.distributed.initialize()` must already have run (gloo)."""
    record = CollectiveRecord()
    for name in TENSOR_COLLECTIVES:
        if hasattr(dist, name):
            monkeypatch.setattr(dist, name, _recorded(name, record))
    for module in (dist, param_and_grad_buffer):
        monkeypatch.setattr(module, "_coalescing_manager", _coalescing_manager)
    monkeypatch.setattr(clip_grads, "l2_norm_impl", _l2_norm_on_device)
    monkeypatch.setattr(cpu_compat, "cuda_stands_for", "meta")
    previous = use_device(ACCELERATOR)
    try:
        with _PlacementMode():
            yield record
    finally:
        use_device(previous)
