"""Our sequence-parallel-capable norms against the references they replace."""

import torch
from megatron.core.transformer import TransformerConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from xr_nemo.models.norms import LayerNorm, Norm, RMSNorm


def _config(normalization: str, sequence_parallel: bool = False) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        normalization=normalization,
        tensor_model_parallel_size=2 if sequence_parallel else 1,
        sequence_parallel=sequence_parallel,
        use_cpu_initialization=True,
    )


def test_rmsnorm_matches_transformers_qwen2_rmsnorm_bit_for_bit():
    torch.manual_seed(0)
    ours = Norm(_config("RMSNorm"), 16, eps=1e-6)
    reference = Qwen2RMSNorm(16, eps=1e-6)
    weight = torch.randn(16)
    ours.weight.data.copy_(weight)
    reference.weight.data.copy_(weight)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 16).to(dtype)
        assert isinstance(ours, RMSNorm)
        assert torch.equal(ours.to(dtype)(x), reference.to(dtype)(x))


def test_layernorm_matches_torch_layernorm():
    torch.manual_seed(0)
    ours = Norm(_config("LayerNorm"), 16, eps=1e-5)
    assert isinstance(ours, LayerNorm)
    reference = torch.nn.LayerNorm(16, eps=1e-5)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(ours(x), reference(x))


def test_norm_parameters_are_marked_for_sequence_parallel_gradient_reduction():
    for normalization in ("RMSNorm", "LayerNorm"):
        norm = Norm(_config(normalization, sequence_parallel=True), 16)
        assert all(getattr(p, "sequence_parallel", False) for p in norm.parameters())
        plain = Norm(_config(normalization), 16)
        assert not any(getattr(p, "sequence_parallel", False) for p in plain.parameters())
