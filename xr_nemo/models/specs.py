"""Transformer layer specs for megatron-core's GPTModel."""

from __future__ import annotations

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from xr_nemo.models.context_parallel_attention import ContextParallelAttention
from xr_nemo.models.norms import Norm

# TransformerConfig settings the local spec needs: these fused kernels come from Apex/TE or CUDA only.
LOCAL_SPEC_SETTINGS: dict[str, bool] = dict(
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    masked_softmax_fusion=False,
    persist_layer_norm=False,
    apply_rope_fusion=False,
    gradient_accumulation_fusion=False,
)


def local_block_spec(config: TransformerConfig, vp_stage: int | None = None) -> ModuleSpec:
    """megatron-core's local spec with norms that support sequence parallelism, final norm included,
    and an attention that supports context parallelism when it is on."""
    layer = get_gpt_layer_local_spec(normalization=config.normalization)
    if config.context_parallel_size > 1:
        layer.submodules.self_attention.submodules.core_attention = ContextParallelAttention
    layer.submodules.input_layernorm = Norm
    layer.submodules.pre_mlp_layernorm = Norm
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=Norm),
    )
