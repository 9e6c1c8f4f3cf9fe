"""Sequence packing: samples into fixed-length sequences (best-fit decreasing), and the tensors of a
micro-batch — tokens, shifted labels, loss mask, 3-D mrope position ids restarting at every sample — with
the samples' boundaries as megatron-core's `PackedSeqParams`, so that attention stays causal and inside
each sample without any [seq × seq] mask.

The boundaries (`cu_seqlens_q` = `cu_seqlens_kv`, int32) run over the micro-batch's positions flattened
row by row — position t of row r is r·seq + t, the layout of a THD batch — and close every row, so the
padding at the end of a row is a segment of its own that no real token attends to. `max_seqlen_q/kv` is
the longest segment. `qkv_format` stays "sbhd": tensors keep their [seq, batch] layout, and context
parallelism splits them but never the boundaries, which stay in whole-sequence positions.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np
import torch
from megatron.core.packed_seq_params import PackedSeqParams

PositionIds = Callable[[torch.Tensor], torch.Tensor]  # [1, L] token ids → [3, 1, L] position ids


def text_position_ids(ids: torch.Tensor) -> torch.Tensor:
    """mrope position ids of a text-only sample: the three components advance together."""
    return torch.arange(ids.shape[1]).expand(3, 1, -1)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length ≤ `capacity`: longest first, each into the
    fullest bin that still fits it. Within a bin, samples keep their index order."""
    too_long = [i for i, length in enumerate(lengths) if length > capacity]
    if too_long:
        raise ValueError(f"sample {too_long[0]} has length {lengths[too_long[0]]} > capacity {capacity}")
    free: list[int] = []  # remaining space per open bin, sorted
    owners: list[int] = []  # bin index per entry of `free`
    bins: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = bisect.bisect_left(free, lengths[index])
        if slot == len(free):
            bins.append([index])
            remaining, owner = capacity - lengths[index], len(bins) - 1
        else:
            owner = owners.pop(slot)
            remaining = free.pop(slot) - lengths[index]
            bins[owner].append(index)
        slot = bisect.bisect_left(free, remaining)
        free.insert(slot, remaining)
        owners.insert(slot, owner)
    return [sorted(b) for b in bins]


def packed_seq_params(spans: Sequence[Sequence[int]], width: int) -> PackedSeqParams:
    """Boundaries of rows of `width` positions holding samples of `spans[r]` positions each, then
    padding (layout in the module docstring)."""
    bounds = [0]
    for row, lengths in enumerate(spans):
        for length in lengths:
            if length:
                bounds.append(bounds[-1] + length)
        if bounds[-1] != (row + 1) * width:
            bounds.append((row + 1) * width)
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    longest = int(cu_seqlens.diff().max())
    return PackedSeqParams(
        qkv_format="sbhd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def collate(
    rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    pad_id: int,
    length: int | None = None,
    position_ids: PositionIds = text_position_ids,
    multiple_of: int = 1,
) -> dict[str, torch.Tensor | PackedSeqParams]:
    """One micro-batch. `rows[r]` lists the (token ids, assistant mask) samples of sequence r. Each
    sample of L tokens gives L-1 positions (inputs and next-token labels). Sequences are padded to
    `length` (default: the longest row, rounded up to a multiple of `multiple_of`). A row without
    samples is all padding, trained on nowhere (`xr_nemo.data.batches.deal` makes such rows up)."""
    spans = [[len(ids) - 1 for ids, _ in row] for row in rows]
    longest = max(1, *(sum(s) for s in spans))
    width = -(-longest // multiple_of) * multiple_of if length is None else length
    if longest > width:
        raise ValueError(f"a sequence of {longest} tokens exceeds the length {width}")
    batch = len(rows)
    tokens = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(batch, width)
    positions = torch.zeros(3, batch, width, dtype=torch.long)
    for r, row in enumerate(rows):
        cursor = 0
        for ids, mask in row:
            ids_t = torch.as_tensor(ids, dtype=torch.long)
            end = cursor + len(ids) - 1
            tokens[r, cursor:end] = ids_t[:-1]
            labels[r, cursor:end] = ids_t[1:]
            loss_mask[r, cursor:end] = torch.as_tensor(mask[1:], dtype=torch.float)
            positions[:, r, cursor:end] = position_ids(ids_t[None, :-1])[:, 0]
            cursor = end
    return {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": positions,
        "packed_seq_params": packed_seq_params(spans, width),
        "num_samples": torch.tensor(sum(len(row) for row in rows)),
        "real_tokens": torch.tensor(sum(sum(s) for s in spans)),
    }
