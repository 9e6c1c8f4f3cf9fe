"""Core attention under context parallelism for the local (non-Transformer-Engine) layer spec.

megatron-core's own `DotProductAttention` refuses context parallelism; Transformer Engine's attention
runs it as a ring on GPUs. This module gathers the keys and values of the whole sequence from the
context-parallel group and lets each rank's queries (its two chunks, see
`xr_nemo.distributed.context_parallel`) attend to them: the same result as attention over the whole
sequence, with activations for 1/CP of the queries. It serves CPU runs and GPUs without TE.
"""

from __future__ import annotations

import math

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer import MegatronModule, TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.utils import attention_mask_func
from megatron.core.utils import divide

from xr_nemo.distributed import context_parallel


class ContextParallelAttention(MegatronModule):
    """Drop-in for megatron-core's `DotProductAttention` (same constructor and forward arguments).

    The attention mask, when given, is the [batch, 1, local queries, whole-sequence keys] slice of the
    full mask (causality included, True = masked); without one, attention is causal."""

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
        self.dropout = torch.nn.Dropout(
            config.attention_dropout if attention_dropout is None else attention_dropout
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object | None = None,
    ) -> torch.Tensor:
        """query [local seq, batch, heads, dim], key/value [local seq, batch, groups, dim] →
        [local seq, batch, heads · dim]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("packed-sequence parameters and attention bias need Transformer Engine")
        key = context_parallel.gather_sequence(key)
        value = context_parallel.gather_sequence(value)
        repeats = self.heads // self.query_groups
        key = key.repeat_interleave(repeats, dim=2)
        value = value.repeat_interleave(repeats, dim=2)

        scores = torch.einsum("sbhd,tbhd->bhst", query, key) * self.softmax_scale
        if attention_mask is None:
            attention_mask = self._causal_mask(key.shape[0], query.device)
        probs = torch.softmax(attention_mask_func(scores.float(), attention_mask), dim=-1).to(query.dtype)
        if self.config.sequence_parallel:
            probs = self.dropout(probs)
        else:  # the model-parallel RNG stream, as megatron-core's DotProductAttention draws it
            with tensor_parallel.get_cuda_rng_tracker().fork():
                probs = self.dropout(probs)
        context = torch.einsum("bhst,tbhd->sbhd", probs, value)
        return context.reshape(context.shape[0], context.shape[1], -1)

    @staticmethod
    def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
        queries = context_parallel.split_sequence(torch.arange(length), 0)
        keys = torch.arange(length)
        return (keys[None, :] > queries[:, None]).to(device)
