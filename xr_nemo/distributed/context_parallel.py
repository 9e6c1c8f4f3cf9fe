"""Context parallelism: each rank of a context-parallel group holds a slice of every sequence.

The slice follows megatron-core's load-balanced layout: a sequence is cut into 2·CP equal chunks and CP
rank r keeps chunks r and 2·CP−1−r, so that under a causal mask every rank has the same attention work.
Batches are split once, when they are made (`split_batch`); attention gathers keys and values of the
whole sequence (`gather_sequence`) and places its queries with `local_spans`, and everything else in the
model works on the local tokens alone.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

# Batch entries whose sequence dimension is not 1: mrope ids [3, batch, seq].
SEQUENCE_DIMS = {"position_ids": 2}
IMAGE_INPUTS = ("pixel_values", "image_grid_thw")  # whole images go to every rank


def size() -> int:
    """1 outside a distributed job (megatron-core says 0 there)."""
    return max(1, parallel_state.get_context_parallel_world_size())


def rank() -> int:
    return parallel_state.get_context_parallel_rank()


def _chunk_ids(cp_rank: int, cp_size: int) -> torch.Tensor:
    return torch.tensor([cp_rank, 2 * cp_size - 1 - cp_rank])


def split_sequence(
    tensor: torch.Tensor, dim: int, cp_rank: int | None = None, cp_size: int | None = None
) -> torch.Tensor:
    """Rank `cp_rank`'s two chunks of `tensor` along `dim`, concatenated (differentiable). The rank and
    size default to this process's."""
    cp_rank = rank() if cp_rank is None else cp_rank
    cp_size = size() if cp_size is None else cp_size
    if cp_size == 1:
        return tensor
    length = tensor.shape[dim]
    if length % (2 * cp_size):
        raise ValueError(f"length {length} is not a multiple of 2 × context_parallel = {2 * cp_size}")
    chunks = tensor.unflatten(dim, (2 * cp_size, length // (2 * cp_size)))
    return chunks.index_select(dim, _chunk_ids(cp_rank, cp_size).to(tensor.device)).flatten(dim, dim + 1)


def local_spans(length: int, cp_rank: int | None = None, cp_size: int | None = None) -> list[tuple[int, int]]:
    """(start, end) in whole-sequence positions of the chunks rank `cp_rank` holds of a sequence of
    `length`, in the order `split_sequence` concatenates them."""
    cp_size = size() if cp_size is None else cp_size
    if cp_size == 1:
        return [(0, length)]
    cp_rank = rank() if cp_rank is None else cp_rank
    chunk = length // (2 * cp_size)
    return [(c * chunk, (c + 1) * chunk) for c in _chunk_ids(cp_rank, cp_size).tolist()]


def split_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """This rank's slice of every per-position entry of `batch`. Scalars, images and packed-sequence
    parameters (boundaries in whole-sequence positions, which attention reads) are kept whole."""
    if size() == 1:
        return batch
    return {
        key: value
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or key in IMAGE_INPUTS
        else split_sequence(value, SEQUENCE_DIMS.get(key, 1))
        for key, value in batch.items()
    }


def _in_sequence_order(gathered: torch.Tensor, cp_size: int) -> torch.Tensor:
    """[rank 0's slice, rank 1's slice, …] along dim 0 → the whole sequence in order."""
    slots = torch.cat([_chunk_ids(r, cp_size) for r in range(cp_size)])  # chunk held in each slot
    chunks = gathered.unflatten(0, (2 * cp_size, gathered.shape[0] // (2 * cp_size)))
    return chunks.index_select(0, torch.argsort(slots).to(gathered.device)).flatten(0, 1)


def gather_sequence(local: torch.Tensor) -> torch.Tensor:
    """The whole sequence along dim 0 from every rank's slice. Differentiable: the backward pass sums
    the gradient over the group and keeps this rank's slice (a reduce-scatter)."""
    group = parallel_state.get_context_parallel_group()
    if group.size() == 1:
        return local
    gathered = gather_from_sequence_parallel_region(local, tensor_parallel_output_grad=True, group=group)
    return _in_sequence_order(gathered, group.size())
