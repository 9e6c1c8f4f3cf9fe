"""megatron-core configuration of Qwen2.5-VL's language model, derived from the HF config alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig
from transformers import PretrainedConfig, Qwen2_5_VLConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.errors import ConfigError
from xr_nemo.models.layer_settings import LayerSettings

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"  # config.json `architectures`; vLLM's class name


@dataclass(frozen=True)
class LanguageModelShape:
    """What GPTModel takes beside the TransformerConfig."""

    vocab_size: int
    max_sequence_length: int
    rope_theta: float
    tie_word_embeddings: bool


def language_model_config(
    hf_config: Qwen2_5_VLConfig,
    parallel: ParallelConfig | None = None,
    params_dtype: torch.dtype = torch.float32,
    layers: LayerSettings | None = None,
) -> tuple[TransformerConfig, LanguageModelShape]:
    """`layers` (resolved for this machine) picks the layer implementation, FP8 and recompute; the
    default, local layers in the given dtype, is what conversion and CPU runs build."""
    return qwen_language_model_config(hf_config, parallel, params_dtype, layers, qkv_bias=True, qk_norm=False)


def qwen_language_model_config(
    hf_config: PretrainedConfig,
    parallel: ParallelConfig | None,
    params_dtype: torch.dtype,
    layers: LayerSettings | None,
    *,
    qkv_bias: bool,
    qk_norm: bool,
) -> tuple[TransformerConfig, LanguageModelShape]:
    """The Qwen VL language models' config: Qwen2.5-VL's has biases on q/k/v; Qwen3-VL's has none
    and normalises each query and key head (qk-norm) instead."""
    text = hf_config.text_config
    parallel = parallel or ParallelConfig()
    rope = text.rope_parameters or {}
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    mrope_section = list(rope.get("mrope_section") or [])
    if sum(mrope_section) != head_dim // 2:
        raise ConfigError(
            f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}",
            where="config.json text_config.rope_parameters.mrope_section",
            fix="use the config.json the checkpoint was trained with",
        )
    for name, count in (
        ("num_attention_heads", text.num_attention_heads),
        ("num_key_value_heads", text.num_key_value_heads),
    ):
        if count % parallel.tensor_parallel:
            raise ConfigError(
                f"{name}={count} is not divisible by tensor_parallel={parallel.tensor_parallel}",
                where=f"config.json text_config.{name}",
                fix="choose a tensor_parallel size that divides the attention and key-value head counts",
            )
    config = TransformerConfig(
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        ffn_hidden_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads,
        num_query_groups=text.num_key_value_heads,
        kv_channels=head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=text.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=qkv_bias,
        qk_layernorm=qk_norm,
        hidden_dropout=0.0,
        attention_dropout=text.attention_dropout,
        mrope_section=mrope_section,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=not torch.cuda.is_available(),
        **(layers or LayerSettings()).transformer_config_kwargs(),
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        context_parallel_size=parallel.context_parallel,
        sequence_parallel=parallel.sequence_parallel,
    )
    shape = LanguageModelShape(
        vocab_size=text.vocab_size,
        max_sequence_length=text.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", 1_000_000.0)),
        tie_word_embeddings=bool(hf_config.tie_word_embeddings or text.tie_word_embeddings),
    )
    return config, shape
