"""megatron-core configuration of Qwen3-VL's language model, derived from the HF config alone."""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig
from transformers import Qwen3VLConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.errors import ConfigError
from xr_nemo.models.layer_settings import LayerSettings
from xr_nemo.models.qwen25_vl.config import LanguageModelShape, qwen_language_model_config

ARCHITECTURE = "Qwen3VLForConditionalGeneration"  # config.json `architectures`; vLLM's class name


def language_model_config(
    hf_config: Qwen3VLConfig,
    parallel: ParallelConfig | None = None,
    params_dtype: torch.dtype = torch.float32,
    layers: LayerSettings | None = None,
) -> tuple[TransformerConfig, LanguageModelShape]:
    """Qwen2.5-VL's language model config with qk-norm and q/k/v biases as `attention_bias` says;
    DeepStack's layers must sit on the first pipeline stage, beside the vision tower that feeds them."""
    config, shape = qwen_language_model_config(
        hf_config,
        parallel,
        params_dtype,
        layers,
        qkv_bias=bool(hf_config.text_config.attention_bias),
        qk_norm=True,
    )
    deepstack = len(hf_config.vision_config.deepstack_visual_indexes)
    first_stage = config.num_layers // config.pipeline_model_parallel_size
    if deepstack > first_stage:
        raise ConfigError(
            f"DeepStack feeds the first {deepstack} decoder layers from the vision tower, but the first "
            f"pipeline stage holds {first_stage} of {config.num_layers}",
            where="parallel.pipeline_parallel",
            fix=f"use a pipeline_parallel size that leaves at least {deepstack} layers on the first stage",
        )
    return config, shape
