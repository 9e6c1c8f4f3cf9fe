"""Core attention of the local (non-Transformer-Engine) layer spec: causal attention inside each packed
sample, from sequence boundaries, with or without context parallelism.

Packed micro-batches carry megatron-core's `PackedSeqParams` (laid out in `xr_nemo.data.packing`): the
sample boundaries over the micro-batch's positions flattened row by row. Each sample attends to itself
alone through torch's `scaled_dot_product_attention`, whose CPU kernel is a flash attention, so memory
grows with the sequence rather than its square and no [seq × seq] mask exists. Without packed
parameters every row is one causal sequence.

Under context parallelism each rank holds two chunks of every sequence
(`xr_nemo.distributed.context_parallel`): the keys and values of the whole sequence are gathered, and
each piece of a sample inside a chunk attends to the sample up to itself. A piece whose sample began in
an earlier chunk needs a [piece × sample-so-far] boolean mask, the only mask built here; the attention
with and without context parallelism is the same. Dropout draws from megatron-core's model-parallel RNG
stream, as its `DotProductAttention` does.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import MegatronModule, TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.utils import divide

from xr_nemo.distributed import context_parallel


def segment_bounds(packed_seq_params: PackedSeqParams | None, batch: int, length: int) -> list[int]:
    """Sorted boundaries of the segments over `batch` rows of `length` positions, flattened row by row;
    every row start is one, so no segment spans two rows."""
    rows = torch.arange(batch + 1) * length
    if packed_seq_params is None:
        return rows.tolist()
    if packed_seq_params.qkv_format not in (None, "sbhd"):
        raise NotImplementedError(f"qkv_format {packed_seq_params.qkv_format!r} needs Transformer Engine")
    cu_seqlens = packed_seq_params.cu_seqlens_q.cpu().long()
    if not torch.equal(cu_seqlens, packed_seq_params.cu_seqlens_kv.cpu().long()):
        raise ValueError("self-attention takes the same boundaries for queries and keys")
    if int(cu_seqlens[-1]) != batch * length:
        raise ValueError(
            f"cu_seqlens end at {int(cu_seqlens[-1])}, the micro-batch has {batch} × {length} positions "
            "(boundaries run over whole sequences, flattened row by row)"
        )
    return torch.unique(torch.cat([cu_seqlens, rows])).tolist()


def _causal(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, offset: int, scale: float, dropout: float
) -> torch.Tensor:
    """[1, heads, queries, dim] attending to keys that start `offset` positions before the first query."""
    if offset == 0:
        return F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scale, dropout_p=dropout
        )
    keys = torch.arange(key.shape[2], device=query.device)
    queries = torch.arange(offset, offset + query.shape[2], device=query.device)
    mask = keys[None, :] <= queries[:, None]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, dropout_p=dropout)


def causal_segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: Sequence[int],
    spans: Sequence[tuple[int, int]],
    scale: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention within segments. query [batch, heads, local, dim] holds the positions of `spans`
    (whole-sequence (start, end), in local order); key and value [batch, heads, whole, dim]; `bounds`
    from `segment_bounds`. Returns [batch, heads, local, dim]."""
    length = key.shape[2]
    segments: list[list[tuple[int, int]]] = [[] for _ in range(query.shape[0])]
    for start, end in itertools.pairwise(bounds):
        row = start // length
        segments[row].append((start - row * length, end - row * length))
    rows = []
    for row, row_segments in enumerate(segments):
        pieces, local = [], 0
        for span_start, span_end in spans:
            for seg_start, seg_end in row_segments:
                first, last = max(seg_start, span_start), min(seg_end, span_end)
                if first < last:
                    at = local + first - span_start
                    pieces.append(
                        _causal(
                            query[row : row + 1, :, at : at + last - first],
                            key[row : row + 1, :, seg_start:last],
                            value[row : row + 1, :, seg_start:last],
                            first - seg_start,
                            scale,
                            dropout,
                        )
                    )
            local += span_end - span_start
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0)


class LocalAttention(MegatronModule):
    """Drop-in for megatron-core's `DotProductAttention` (same constructor and forward arguments), causal
    within the segments of `packed_seq_params`; it takes no dense mask."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: object | None = None,
    ) -> None:
        super().__init__(config=config)
        tp = config.tensor_model_parallel_size
        self.heads = divide(config.num_attention_heads, tp)
        self.query_groups = divide(config.num_query_groups, tp)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        """query [local seq, batch, heads, dim], key/value [local seq, batch, groups, dim] →
        [local seq, batch, heads · dim]."""
        if attention_mask is not None or attention_bias is not None:
            raise NotImplementedError(
                "the local attention is causal within the samples of packed_seq_params; it takes no "
                "attention mask or bias"
            )
        repeats = self.heads // self.query_groups
        key, value = (
            context_parallel.gather_sequence(t).repeat_interleave(repeats, dim=2).permute(1, 2, 0, 3)
            for t in (key, value)
        )
        batch, _, length, _ = key.shape
        dropout = self.dropout if self.training else 0.0
        with self._dropout_rng(dropout):
            context = causal_segment_attention(
                query.permute(1, 2, 0, 3),
                key,
                value,
                segment_bounds(packed_seq_params, batch, length),
                context_parallel.local_spans(length),
                self.softmax_scale,
                dropout,
            )
        return context.permute(2, 0, 1, 3).reshape(query.shape[0], batch, -1)

    def _dropout_rng(self, dropout: float) -> contextlib.AbstractContextManager:
        """The model-parallel RNG stream, as megatron-core's `DotProductAttention` draws dropout (the
        default stream under sequence parallelism)."""
        if dropout == 0.0 or self.config.sequence_parallel:
            return contextlib.nullcontext()
        return tensor_parallel.get_cuda_rng_tracker().fork()
