"""Transformer layer specs for megatron-core's GPTModel: the local (torch) one and Transformer Engine's.

Both give the same checkpoint: megatron-core's local layer maps its norms to the keys of the TE layer,
which fuses each norm into the linear layer after it (`input_layernorm.weight` is stored as
`self_attention.linear_qkv.layer_norm_weight`, `pre_mlp_layernorm.weight` as
`mlp.linear_fc1.layer_norm_weight`), and the final norm is ours in both.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import TransformerLayer

from xr_nemo.config.schema import TransformerImpl
from xr_nemo.errors import XrNemoError
from xr_nemo.models.local_attention import LocalAttention
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


def local_block_spec(
    config: TransformerConfig,
    vp_stage: int | None = None,
    layer_module: type[TransformerLayer] = TransformerLayer,
) -> ModuleSpec:
    """megatron-core's local spec with norms that support sequence parallelism, final norm included,
    and an attention that takes packed sequences as boundaries and supports context parallelism;
    per-head query and key norms where `config.qk_layernorm`. `layer_module` replaces megatron-core's
    `TransformerLayer` (same submodules), for a family whose layers do more."""
    layer = get_gpt_layer_local_spec(normalization=config.normalization, qk_layernorm=config.qk_layernorm)
    attention = layer.submodules.self_attention.submodules
    attention.core_attention = LocalAttention
    if config.qk_layernorm:
        attention.q_layernorm = Norm
        attention.k_layernorm = Norm
    layer.module = layer_module
    layer.submodules.input_layernorm = Norm
    layer.submodules.pre_mlp_layernorm = Norm
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=Norm),
    )


def te_spec_settings() -> dict[str, bool]:
    """TransformerConfig settings of the Transformer Engine spec. megatron-core's fused SwiGLU and
    bias-dropout-add are CUDA kernels; rope stays unfused because mrope's frequencies differ per batch
    row, which TE's fused rope cannot take; weight-gradient accumulation is fused only where Apex's
    kernel is built, which megatron-core's own output layer needs. The other two fusions are kernels
    of modules this spec does not use."""
    return dict(
        bias_activation_fusion=True,
        bias_dropout_fusion=True,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None,
    )


def spec_settings(impl: str) -> dict[str, bool]:
    """The fusion settings the layers of `impl` ("local" or "transformer_engine") are built with."""
    return te_spec_settings() if impl == TransformerImpl.transformer_engine else LOCAL_SPEC_SETTINGS


def te_block_spec(
    config: TransformerConfig,
    vp_stage: int | None = None,
    layer_module: type[TransformerLayer] = TransformerLayer,
) -> ModuleSpec:
    """megatron-core's Transformer Engine layers: norms fused into the linear layers after them, and
    TE's fused/flash attention, which takes packed (THD) batches without masks and runs context
    parallelism itself (`config.cp_comm_type`, ring attention for "p2p"); TE's norms for the query and
    key heads where `config.qk_layernorm`. Needs TE to build."""
    layer = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    layer.module = layer_module
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=Norm),
    )


def packed_seq_params_for(
    config: TransformerConfig, params: PackedSeqParams | None, batch_size: int, seq_length: int
) -> PackedSeqParams | None:
    """The data layer's packed-sequence boundaries in the form the built layers take; the model passes
    its input's [batch, seq] shape. The local attention takes them as they are. Transformer Engine
    takes a packed row as THD (the batch dimension dropped), so one row per micro-batch; and its
    rotary embedding gives each token its own mrope position only when the boundaries span the whole
    row, so padding after the last sequence becomes room in that sequence's padded bounds."""
    if params is None or config.transformer_impl != TransformerImpl.transformer_engine:
        return params
    if batch_size != 1:
        raise XrNemoError(
            f"Transformer Engine takes packed sequences one row per micro-batch, this one has {batch_size}",
            where="trainer.micro_batch_size",
            fix="set trainer.micro_batch_size=1 and pack more tokens per row (trainer.seq_length)",
        )
    if config.context_parallel_size > 1:
        raise XrNemoError(
            "packed sequences under context parallelism are not supported on Transformer Engine layers: "
            "TE splits each packed sequence over the ranks, the data layer splits whole rows",
            where="parallel.context_parallel with model.transformer_impl=transformer_engine",
            fix="set data.packing=false, or parallel.context_parallel=1, or model.transformer_impl=local",
        )
    bounds = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
    if int(bounds[-1]) < seq_length:
        bounds = torch.cat([bounds[:-1], bounds.new_tensor([seq_length])])
    return dataclasses.replace(
        params, qkv_format="thd", cu_seqlens_q_padded=bounds, cu_seqlens_kv_padded=bounds
    )
