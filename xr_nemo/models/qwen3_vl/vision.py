"""Qwen3-VL's vision tower: Transformers' own module (learned position embeddings interpolated to each
image, 2-D rotary, LayerNorm and GELU blocks, the patch merger, and the DeepStack mergers that read
intermediate blocks), replicated on every tensor-parallel rank and frozen by default, as Qwen2.5-VL's."""

from __future__ import annotations

import torch
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel


def build_vision_tower(
    vision_config: Qwen3VLVisionConfig, dtype: torch.dtype, trainable: bool
) -> Qwen3VLVisionModel:
    """Trainable parameters are tagged so megatron-core averages their gradients across tensor-parallel
    ranks (each rank computes the same full gradient)."""
    config = vision_config.__class__.from_dict(vision_config.to_dict())
    config._attn_implementation = "sdpa"
    tower = Qwen3VLVisionModel._from_config(config, dtype=dtype)
    for param in tower.parameters():
        param.requires_grad_(trainable)
        param.average_gradients_across_tp_domain = True
    return tower
