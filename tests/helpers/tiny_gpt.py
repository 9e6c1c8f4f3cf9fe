"""A tiny megatron-core GPT (Qwen2-style blocks) and helpers to give every parallel layout the same weights.

The parity tests build the model once as a single process, keep its full state dict, and load the
matching shard into each tensor/pipeline-parallel rank with `load_full_state_dict`; `sharded_reference`
also cuts reference gradients the same way so they compare with each rank's own.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from xr_nemo.conversion.sharding import shard_for_this_rank
from xr_nemo.models.specs import LOCAL_SPEC_SETTINGS, local_block_spec

VOCAB_SIZE = 128
SEQ_LEN = 32


def tiny_gpt_config(
    num_layers: int = 4, sequence_parallel: bool = False, **overrides: object
) -> TransformerConfig:
    """fp32, dropout-free, unfused: deterministic on CPU and comparable across layouts."""
    kwargs: dict[str, object] = dict(
        num_layers=num_layers,
        hidden_size=64,
        ffn_hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=torch.float32,
        use_cpu_initialization=True,
        **LOCAL_SPEC_SETTINGS,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        sequence_parallel=sequence_parallel,
        pipeline_dtype=torch.float32,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def build_tiny_gpt(config: TransformerConfig, vocab_size: int = VOCAB_SIZE, tied: bool = False) -> GPTModel:
    return GPTModel(
        config=config,
        transformer_layer_spec=local_block_spec(config),
        vocab_size=vocab_size,
        max_sequence_length=SEQ_LEN,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=tied,
        position_embedding_type="rope",
    )


def global_name(local_name: str, layer_offset: int) -> str:
    """Name of a parameter in the single-process model: layer numbers shifted by the stage's offset."""
    return re.sub(
        r"^decoder\.layers\.(\d+)\.",
        lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.",
        local_name,
    )


def load_full_state_dict(model: GPTModel, full: dict[str, torch.Tensor]) -> None:
    shards = sharded_reference(model, full)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(shards[name])


def sharded_reference(model: GPTModel, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full tensors (weights or gradients) cut to this rank's parameters, keyed by local name."""
    offset = get_transformer_layer_offset(model.config)
    return {
        name: shard_for_this_rank(
            full[global_name(name, offset)], param, name, model.config.gated_linear_unit
        )
        for name, param in model.named_parameters()
    }
