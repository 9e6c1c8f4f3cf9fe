"""The live model's weights as full Hugging Face tensors, in memory: what the rollout engine is refit
from. Tensor-parallel slices are gathered, pipeline stages broadcast, local layer numbers made global,
and every parameter goes through the same mapping table as `convert export`. Collective over the
model-parallel group; every rank receives every tensor."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from xr_nemo.conversion.sharding import gather_from_tensor_parallel
from xr_nemo.distributed.devices import compute_device
from xr_nemo.models.mapping import find_mapping
from xr_nemo.models.registry import family_of

_LAYER = re.compile(r"(\.decoder\.layers\.)(\d+)\.")


def _global_layer_names(model: torch.nn.Module) -> dict[str, str]:
    """Local parameter name → checkpoint name (global layer numbers), for the parameters to send."""
    decoder = model.language_model.decoder
    offsets = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(decoder.layers)}
    names = {}
    for name, _ in model.named_parameters():
        if name.startswith("visual.") and not any(p.requires_grad for p in model.visual.parameters()):
            continue  # a frozen vision tower never changes: the engine keeps its own copy
        if model.share_embeddings_and_output_weights and name.endswith("output_layer.weight"):
            continue  # the last stage's copy of the tied embedding
        names[name] = _LAYER.sub(lambda m: f"{m.group(1)}{offsets[m.group(2)]}.", name)
    return names


def _full_local_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    params = dict(model.named_parameters())
    gated = model.config.gated_linear_unit
    for local, global_name in _global_layer_names(model).items():
        param = params[local]
        yield global_name, gather_from_tensor_parallel(param.detach(), param, local, gated)


def _full_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= parallel_state.get_tensor_model_parallel_world_size()
    return tuple(shape)


def _from_every_stage(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        yield from _full_local_parameters(model)
        return
    group = parallel_state.get_pipeline_model_parallel_group()
    ranks = dist.get_process_group_ranks(group)
    params = dict(model.named_parameters())
    mine = [
        (name, _full_shape(params[local]), params[local].dtype)
        for local, name in _global_layer_names(model).items()
    ]
    catalogue: list = [None] * len(ranks)
    dist.all_gather_object(catalogue, mine, group=group)
    local = _full_local_parameters(model)
    for owner, entries in zip(ranks, catalogue, strict=True):
        for name, shape, dtype in entries:
            tensor = (
                next(local)[1].contiguous()
                if owner == dist.get_rank()
                else torch.empty(shape, dtype=dtype, device=compute_device())
            )
            dist.broadcast(tensor, src=owner, group=group)
            yield name, tensor


def hf_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(hub name, full tensor) for every parameter the engine needs, converted lazily one at a time by
    the mapping table of the model's family."""
    mappings = family_of(model.hf_config).mappings
    for name, tensor in _from_every_stage(model):
        mapping, wildcard = find_mapping(name, mappings)
        _, hf_names = mapping.resolve(wildcard)
        yield from zip(hf_names, mapping.to_hf(tensor, model.config), strict=True)
