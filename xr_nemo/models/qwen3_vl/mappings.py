"""Qwen3-VL's HF ⇄ Megatron mapping table: Qwen2.5-VL's without q/k/v biases, with the per-head query
and key norms, under the hub's `model.language_model.` prefix; the vision tower (DeepStack mergers
included) copied under the hub's names."""

from __future__ import annotations

from xr_nemo.models.mapping import GatedMLPMapping, Mapping, QKVMapping

LANGUAGE_MODEL = "language_model"


def _layer(hf: str, megatron: str, kind: type[Mapping] = Mapping, *more_hf: str) -> Mapping:
    hf_names = tuple(f"model.language_model.layers.*.{name}" for name in (hf, *more_hf))
    return kind(f"{LANGUAGE_MODEL}.decoder.layers.*.{megatron}", hf_names)


QWEN3_VL_MAPPINGS: tuple[Mapping, ...] = (
    Mapping(
        f"{LANGUAGE_MODEL}.embedding.word_embeddings.weight", ("model.language_model.embed_tokens.weight",)
    ),
    _layer("input_layernorm.weight", "input_layernorm.weight"),
    # Transformer Engine layers fuse each norm into the next linear layer (same checkpoint key).
    _layer("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
    _layer(
        "self_attn.q_proj.weight",
        "self_attention.linear_qkv.weight",
        QKVMapping,
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    _layer("self_attn.q_norm.weight", "self_attention.q_layernorm.weight"),
    _layer("self_attn.k_norm.weight", "self_attention.k_layernorm.weight"),
    _layer("self_attn.o_proj.weight", "self_attention.linear_proj.weight"),
    _layer("post_attention_layernorm.weight", "pre_mlp_layernorm.weight"),
    _layer("post_attention_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
    _layer("mlp.gate_proj.weight", "mlp.linear_fc1.weight", GatedMLPMapping, "mlp.up_proj.weight"),
    _layer("mlp.down_proj.weight", "mlp.linear_fc2.weight"),
    Mapping(f"{LANGUAGE_MODEL}.decoder.final_layernorm.weight", ("model.language_model.norm.weight",)),
    Mapping(f"{LANGUAGE_MODEL}.output_layer.weight", ("lm_head.weight",)),
    Mapping("visual.**", ("model.visual.**",)),
)
