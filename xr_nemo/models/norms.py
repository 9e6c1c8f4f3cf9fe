"""RMSNorm and LayerNorm for megatron-core's local (non-Transformer-Engine) layer spec.

megatron-core's `WrappedTorchNorm` refuses sequence parallelism. These norms accept it: with sequence
parallelism each tensor-parallel rank normalises its own slice of the sequence, so the weight
gradients are partial sums; marking the parameters `sequence_parallel` makes megatron-core's
`finalize_model_grads` all-reduce them over the tensor-parallel group. The RMSNorm arithmetic follows
Hugging Face's Qwen2 RMSNorm (fp32 statistics, weight applied in the input dtype) so logits match.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return self.weight * hidden_states.to(input_dtype)


class LayerNorm(torch.nn.LayerNorm):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in self.parameters():
            param.sequence_parallel = config.sequence_parallel


class Norm:
    """Builds the norm `config.normalization` names. A class, not a function: megatron-core's
    `build_module` calls classes but returns plain functions uncalled."""

    def __new__(
        cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused
    ) -> torch.nn.Module:
        if config.normalization == "RMSNorm":
            return RMSNorm(config, hidden_size, eps)
        if config.normalization == "LayerNorm":
            return LayerNorm(config, hidden_size, eps)
        raise ValueError(f"unsupported normalization {config.normalization!r}; use RMSNorm or LayerNorm")
