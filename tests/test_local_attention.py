"""The local core attention against a dense masked softmax: random packed segments over a micro-batch of
several rows, whole sequences and every context-parallel rank's two chunks, outputs and gradients."""

import math

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from xr_nemo.distributed.context_parallel import local_spans, split_sequence
from xr_nemo.models.local_attention import causal_segment_attention, segment_bounds

BATCH, HEADS, LENGTH, DIM = 3, 2, 24, 8


def _random_params(generator: torch.Generator) -> PackedSeqParams:
    """Segments of 1 to 9 positions filling each row (the last one stands for the padding)."""
    bounds = [0]
    for row in range(BATCH):
        end = (row + 1) * LENGTH
        while bounds[-1] < end:
            bounds.append(min(end, bounds[-1] + int(torch.randint(1, 10, (1,), generator=generator))))
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)
    return PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)


def _dense_reference(query, key, value, bounds: list[int], scale: float) -> torch.Tensor:
    """Attention over whole rows with the block-diagonal causal mask the data layer used to build."""
    segment = torch.repeat_interleave(torch.arange(len(bounds) - 1), torch.tensor(bounds).diff())
    segment = segment.view(BATCH, 1, LENGTH)
    causal = torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()
    allowed = (segment[..., :, None] == segment[..., None, :]) & causal
    scores = (query @ key.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


@pytest.mark.parametrize("cp_size", [1, 2, 3])
def test_segments_and_context_parallel_chunks_match_a_dense_masked_softmax(cp_size):
    generator = torch.Generator().manual_seed(cp_size)
    params = _random_params(generator)
    bounds = segment_bounds(params, BATCH, LENGTH)
    query, key, value = (
        torch.randn(BATCH, HEADS, LENGTH, DIM, generator=generator, requires_grad=True) for _ in range(3)
    )
    weights = torch.randn(BATCH, HEADS, LENGTH, DIM, generator=generator)
    scale = 1 / math.sqrt(DIM)

    expected = _dense_reference(query, key, value, bounds, scale)
    (expected * weights).sum().backward()
    expected_grads = [t.grad.clone() for t in (query, key, value)]
    for t in (query, key, value):
        t.grad = None

    total = 0
    for cp_rank in range(cp_size):
        local_query = split_sequence(query, 2, cp_rank, cp_size)
        spans = local_spans(LENGTH, cp_rank, cp_size)
        got = causal_segment_attention(local_query, key, value, bounds, spans, scale)
        torch.testing.assert_close(got, split_sequence(expected, 2, cp_rank, cp_size), atol=1e-6, rtol=0)
        total = total + (got * split_sequence(weights, 2, cp_rank, cp_size)).sum()
    total.backward()
    for got, want in zip((query.grad, key.grad, value.grad), expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_rows_are_separate_sequences_with_or_without_packed_parameters():
    assert segment_bounds(None, 2, 5) == [0, 5, 10]
    cu_seqlens = torch.tensor([0, 3, 7, 10], dtype=torch.int32)  # a segment across the row boundary
    params = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)
    assert segment_bounds(params, 2, 5) == [0, 3, 5, 7, 10]


def test_boundaries_that_do_not_cover_the_micro_batch_are_refused():
    cu_seqlens = torch.tensor([0, 3, 5], dtype=torch.int32)  # one row's boundaries for a batch of two
    params = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)
    with pytest.raises(ValueError, match="cu_seqlens end at 5, the micro-batch has 2 × 5 positions"):
        segment_bounds(params, 2, 5)
