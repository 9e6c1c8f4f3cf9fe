"""Qwen2.5-VL's language model as a megatron-core GPTModel with multimodal rotary embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer

from xr_nemo.config.schema import TransformerImpl
from xr_nemo.models.qwen25_vl.config import LanguageModelShape
from xr_nemo.models.specs import local_block_spec, te_block_spec


def build_language_model(
    config: TransformerConfig,
    shape: LanguageModelShape,
    layer_module: type[TransformerLayer] = TransformerLayer,
) -> GPTModel:
    """The one place that picks the layer spec: `config.transformer_impl` (see `layer_settings`);
    `layer_module` is the family's decoder layer class."""
    transformer_engine = config.transformer_impl == TransformerImpl.transformer_engine
    block_spec: Callable = te_block_spec if transformer_engine else local_block_spec
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(config, layer_module=layer_module),
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
    if transformer_engine:
        model.register_load_state_dict_post_hook(_attention_state_is_not_checkpointed)
    return model


def _attention_state_is_not_checkpointed(module: torch.nn.Module, incompatible_keys) -> None:
    """TE's attention has FP8 metadata in its state dict that megatron-core leaves out of checkpoints
    (and local layers have no such state): loading any checkpoint must not miss it."""
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if not key.endswith("core_attention._extra_state")]
