"""Qwen3-VL's HF ⇄ Megatron mapping table: Qwen2.5-VL's without q/k/v biases, with the per-head query
and key norms, under the hub's `model.language_model.` prefix; the vision tower (DeepStack mergers
included) copied under the hub's names."""

from __future__ import annotations

from xr_nemo.models.qwen25_vl.mappings import qwen_vl_mappings

QWEN3_VL_MAPPINGS = qwen_vl_mappings("model.language_model.", "model.visual.", qkv_bias=False, qk_norm=True)
