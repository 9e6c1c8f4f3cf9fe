"""Cut a full (unsharded) tensor to one tensor-parallel rank's slice, as megatron-core lays it out.

The one place that knows megatron-core's tensor-parallel layouts; mappings hand it full tensors.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state


def shard_for_this_rank(
    full: torch.Tensor, param: torch.nn.Parameter, name: str, gated: bool
) -> torch.Tensor:
    """This rank's slice of `full` for `param` (named `name`). Replicated parameters come back whole."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    if gated and name.endswith("mlp.linear_fc1.weight"):
        # Each rank holds [gate shard; up shard], not a contiguous slice of [gate; up].
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp_size, 0)[tp_rank], torch.chunk(up, tp_size, 0)[tp_rank]])
    return torch.chunk(full, tp_size, dim=param.partition_dim)[tp_rank]


def gather_from_tensor_parallel(local: torch.Tensor, param: torch.nn.Parameter, name: str, gated: bool):
    """The full tensor from every tensor-parallel rank's `local` slice: `shard_for_this_rank` inverted.
    Collective over the tensor-parallel group."""
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return local
    shards = [torch.empty_like(local) for _ in range(tp_size)]
    torch.distributed.all_gather(
        shards, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group()
    )
    if gated and name.endswith("mlp.linear_fc1.weight"):
        halves = [torch.chunk(shard, 2, dim=0) for shard in shards]
        return torch.cat([gate for gate, _ in halves] + [up for _, up in halves])
    return torch.cat(shards, dim=param.partition_dim)
