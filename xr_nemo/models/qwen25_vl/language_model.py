"""Qwen2.5-VL's language model as a megatron-core GPTModel with multimodal rotary embeddings."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from xr_nemo.models.qwen25_vl.config import LanguageModelShape
from xr_nemo.models.specs import local_block_spec


def build_language_model(config: TransformerConfig, shape: LanguageModelShape) -> GPTModel:
    model = GPTModel(
        config=config,
        transformer_layer_spec=local_block_spec(config),
        vocab_size=shape.vocab_size,
        max_sequence_length=shape.max_sequence_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=shape.tie_word_embeddings,
        position_embedding_type="mrope",
        rotary_base=shape.rope_theta,
    )
    # Position ids arrive already split over context-parallel ranks, like every other input, so the
    # rotary embedding must not split its output again.
    model.rotary_pos_emb.cp_group = None
    return model


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """megatron-core attention mask ([batch, 1, seq, seq], True = masked) from an HF-style [batch, seq]
    mask (1 = token, 0 = padding). megatron-core adds its causal mask only when given none, so a
    padding mask must carry causality itself."""
    seq = attention_mask.shape[1]
    causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device), diagonal=1)
    return causal[None, None] | ~attention_mask.bool()[:, None, None, :]
