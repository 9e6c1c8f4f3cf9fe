"""Qwen3-VL on megatron-core: Qwen2.5-VL's model with Qwen3-VL's vision tower, qk-norm, interleaved
mrope, and DeepStack features added after the first decoder layers."""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from xr_nemo.models.qwen3_vl.config import language_model_config
from xr_nemo.models.qwen3_vl.deepstack import DeepStackLayer, deepstack_inputs, feature_order
from xr_nemo.models.qwen3_vl.rope import InterleavedMultimodalRotaryEmbedding
from xr_nemo.models.qwen3_vl.vision import build_vision_tower
from xr_nemo.models.qwen25_vl.config import LanguageModelShape
from xr_nemo.models.qwen25_vl.language_model import build_language_model
from xr_nemo.models.qwen25_vl.model import Qwen25VLModel


def build_qwen3_vl_language_model(config: TransformerConfig, shape: LanguageModelShape) -> GPTModel:
    model = build_language_model(config, shape, layer_module=DeepStackLayer)
    model.rotary_pos_emb = InterleavedMultimodalRotaryEmbedding(
        kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=shape.rope_theta
    )
    model.rotary_pos_emb.cp_group = None  # position ids arrive split, as for Qwen2.5-VL
    return model


class Qwen3VLModel(Qwen25VLModel):
    language_model_config = staticmethod(language_model_config)
    build_language_model = staticmethod(build_qwen3_vl_language_model)
    build_vision_tower = staticmethod(build_vision_tower)

    def _decoder_inputs(self, input_ids: torch.Tensor, vision_output) -> dict[str, torch.Tensor]:
        """DeepStack's features for this rank's slice of the sequence (`deepstack`)."""
        order = self._local_slice(feature_order(input_ids, self.image_token_id))
        return deepstack_inputs(order, vision_output.deepstack_features)
