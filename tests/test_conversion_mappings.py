"""HF ⇄ Megatron mappings: layouts against an independent construction, and exact round trips."""

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from transformers import AutoConfig

from xr_nemo.config import ParallelConfig
from xr_nemo.errors import ConfigError
from xr_nemo.models.mapping import GatedMLPMapping, QKVMapping, find_mapping
from xr_nemo.models.qwen25_vl.config import language_model_config
from xr_nemo.models.qwen25_vl.mappings import QWEN25_VL_MAPPINGS
from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl
from xr_nemo.models.registry import family_of


def _config(heads: int, groups: int, head_dim: int = 8) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1,
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        use_cpu_initialization=True,
    )


@pytest.mark.parametrize(("heads", "groups"), [(4, 4), (4, 2), (8, 1), (6, 3)])
def test_qkv_interleaves_each_query_group_with_its_key_and_value(heads, groups):
    config, head_dim, hidden = _config(heads, groups), 8, 16
    q = torch.randn(heads * head_dim, hidden)
    k = torch.randn(groups * head_dim, hidden)
    v = torch.randn(groups * head_dim, hidden)
    fused = QKVMapping("x", ("q", "k", "v")).to_megatron([q, k, v], config)
    per_group = heads // groups
    expected = []
    for g in range(groups):
        expected += [
            q[(g * per_group + h) * head_dim : (g * per_group + h + 1) * head_dim] for h in range(per_group)
        ]
        expected += [k[g * head_dim : (g + 1) * head_dim], v[g * head_dim : (g + 1) * head_dim]]
    assert torch.equal(fused, torch.cat(expected))
    back = QKVMapping("x", ("q", "k", "v")).to_hf(fused, config)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v), strict=True))
    bias = [q[:, 0].clone(), k[:, 0].clone(), v[:, 0].clone()]
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            QKVMapping("x", ()).to_hf(QKVMapping("x", ()).to_megatron(bias, config), config),
            bias,
            strict=True,
        )
    )


def test_gated_mlp_is_gate_then_up():
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    fused = GatedMLPMapping("x", ("g", "u")).to_megatron([gate, up], _config(2, 2))
    assert torch.equal(fused, torch.cat([gate, up]))
    assert all(
        torch.equal(a, b)
        for a, b in zip(GatedMLPMapping("x", ()).to_hf(fused, _config(2, 2)), (gate, up), strict=True)
    )


def test_names_resolve_through_layer_and_suffix_wildcards():
    mapping, layer = find_mapping(
        "language_model.decoder.layers.17.self_attention.linear_qkv.bias", QWEN25_VL_MAPPINGS
    )
    assert layer == "17"
    assert mapping.resolve(layer)[1] == tuple(f"model.layers.17.self_attn.{p}_proj.bias" for p in "qkv")
    assert mapping.match_hf("model.layers.17.self_attn.q_proj.bias") == "17"
    assert mapping.match_hf("model.layers.17.self_attn.k_proj.bias") is None
    assert find_mapping("language_model.decoder.final_layernorm.weight", QWEN25_VL_MAPPINGS)[1] is None
    vision, suffix = find_mapping("visual.blocks.3.attn.qkv.weight", QWEN25_VL_MAPPINGS)
    assert vision.resolve(suffix) == ("visual.blocks.3.attn.qkv.weight", ("visual.blocks.3.attn.qkv.weight",))
    with pytest.raises(KeyError, match="no mapping"):
        find_mapping("language_model.decoder.layers.0.unknown.weight", QWEN25_VL_MAPPINGS)


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    hf = AutoConfig.from_pretrained(build_tiny_qwen25_vl(tmp_path, TinyQwen25VLSpec(num_kv_heads=1)))
    with pytest.raises(ConfigError, match="num_key_value_heads=1 is not divisible by tensor_parallel=2"):
        language_model_config(hf, ParallelConfig(tensor_parallel=2))
    hf.architectures = ["LlamaForCausalLM"]
    with pytest.raises(ConfigError, match="unsupported architecture"):
        family_of(hf, str(tmp_path))
