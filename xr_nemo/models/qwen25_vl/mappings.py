"""Qwen2.5-VL's HF (hub naming) ⇄ Megatron mapping table: the language model's parameters by family of
parameter, the vision tower copied under the hub's names. `qwen_vl_mappings` builds the table of any Qwen
VL family from its hub prefixes and attention variant."""

from __future__ import annotations

from xr_nemo.models.mapping import GatedMLPMapping, Mapping, QKVMapping

LANGUAGE_MODEL = "language_model"


def qwen_vl_mappings(language: str, visual: str, *, qkv_bias: bool, qk_norm: bool) -> tuple[Mapping, ...]:
    """The table for hub names under `language` (e.g. "model.") and `visual` (e.g. "visual."), with
    q/k/v biases or per-head query and key norms as the family has them."""

    def layer(hf: str, megatron: str, kind: type[Mapping] = Mapping, *more_hf: str) -> Mapping:
        hf_names = tuple(f"{language}layers.*.{name}" for name in (hf, *more_hf))
        return kind(f"{LANGUAGE_MODEL}.decoder.layers.*.{megatron}", hf_names)

    qkv = ("self_attn.k_proj", "self_attn.v_proj")
    return (
        Mapping(f"{LANGUAGE_MODEL}.embedding.word_embeddings.weight", (f"{language}embed_tokens.weight",)),
        layer("input_layernorm.weight", "input_layernorm.weight"),
        # Transformer Engine layers fuse each norm into the next linear layer (same checkpoint key).
        layer("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
        layer(
            "self_attn.q_proj.weight",
            "self_attention.linear_qkv.weight",
            QKVMapping,
            *(f"{n}.weight" for n in qkv),
        ),
        *(
            (
                layer(
                    "self_attn.q_proj.bias",
                    "self_attention.linear_qkv.bias",
                    QKVMapping,
                    *(f"{n}.bias" for n in qkv),
                ),
            )
            if qkv_bias
            else ()
        ),
        *(
            (
                layer("self_attn.q_norm.weight", "self_attention.q_layernorm.weight"),
                layer("self_attn.k_norm.weight", "self_attention.k_layernorm.weight"),
            )
            if qk_norm
            else ()
        ),
        layer("self_attn.o_proj.weight", "self_attention.linear_proj.weight"),
        layer("post_attention_layernorm.weight", "pre_mlp_layernorm.weight"),
        layer("post_attention_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
        layer("mlp.gate_proj.weight", "mlp.linear_fc1.weight", GatedMLPMapping, "mlp.up_proj.weight"),
        layer("mlp.down_proj.weight", "mlp.linear_fc2.weight"),
        Mapping(f"{LANGUAGE_MODEL}.decoder.final_layernorm.weight", (f"{language}norm.weight",)),
        Mapping(f"{LANGUAGE_MODEL}.output_layer.weight", ("lm_head.weight",)),
        # The vision tower is Transformers' module under the hub's names, replicated.
        Mapping("visual.**", (f"{visual}**",)),
    )


QWEN25_VL_MAPPINGS = qwen_vl_mappings("model.", "visual.", qkv_bias=True, qk_norm=False)
