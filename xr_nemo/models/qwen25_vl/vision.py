"""Qwen2.5-VL's vision tower and the scatter of its features into the language model's embeddings.

The tower is Transformers' own module (patch embedding, 2-D rotary, window attention with full-attention
blocks at `fullatt_block_indexes`, RMSNorm, SwiGLU, patch merger), so its numerics and parameter names
are the reference's by construction. It is small next to the language model and runs replicated on every
tensor-parallel rank; X-Reasoner trains on text only and keeps it frozen by default.
"""

from __future__ import annotations

import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from xr_nemo.errors import XrNemoError


def build_vision_tower(
    vision_config: Qwen2_5_VLVisionConfig, dtype: torch.dtype, trainable: bool
) -> Qwen2_5_VisionTransformerPretrainedModel:
    """The tower, replicated. Trainable parameters are tagged so megatron-core averages their gradients
    across tensor-parallel ranks (each rank computes the same full gradient)."""
    config = vision_config.__class__.from_dict(vision_config.to_dict())
    config._attn_implementation = "sdpa"
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=dtype)
    for param in tower.parameters():
        param.requires_grad_(trainable)
        param.average_gradients_across_tp_domain = True
    return tower


def scatter_image_features(
    embeddings: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """`embeddings` ([batch, seq, hidden]) with the `<|image_pad|>` positions replaced, row by row, by
    `features` in order."""
    mask = input_ids == image_token_id
    placeholders = int(mask.sum())
    if placeholders != features.shape[0]:
        raise XrNemoError(
            f"the batch has {placeholders} image placeholder tokens but the images give "
            f"{features.shape[0]} features",
            where="input_ids vs pixel_values / image_grid_thw",
            fix="expand each image's placeholder to (t·h·w) / merge_size² tokens "
            "(xr_nemo.models.qwen25_vl.processing.expand_image_placeholders)",
        )
    return embeddings.masked_scatter(mask.unsqueeze(-1), features.to(embeddings.dtype))
