"""What a model family brings, as one frozen bundle: everything outside `xr_nemo.models` reaches a
family's code through it, found by the checkpoint's `architectures` (`xr_nemo.models.registry`).

A family's megatron-core model (`build_model`) is a `MegatronModule` with `language_model` (a `GPTModel`),
`visual` (its vision tower, on the first pipeline stage; None elsewhere), `hf_config` (the config it was
built from) and `share_embeddings_and_output_weights`; it is called as
`model(input_ids, position_ids, attention_mask, labels=, pixel_values=, image_grid_thw=,
packed_seq_params=)`. Its parameter names are the Megatron side of `mappings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import torch
from megatron.core.transformer import MegatronModule, TransformerConfig
from transformers import PretrainedConfig, PreTrainedModel

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.models.layer_settings import LayerSettings
from xr_nemo.models.mapping import Mapping, find_mapping

WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"
OUTPUT_LAYER = "language_model.output_layer.weight"
"""Megatron names every family's model shares (its `language_model` is a GPTModel)."""

TensorPart = int | Literal["vision", "embedding", "output"]
"""Where an HF tensor lives in the megatron-core model: a decoder layer (its number), the vision tower,
the input embedding, or after the decoder (final norm, output layer)."""

PositionIds = Callable[[torch.Tensor], torch.Tensor]
"""Token ids [batch, seq] → the rotary position ids the model takes (for mrope, [3, batch, seq])."""


class SharedTensor(NamedTuple):
    """A tensor of the colocated vLLM engine's model with the megatron-core tensor holding its values
    (`xr_nemo.generation.shared_weights`)."""

    module: torch.nn.Module  # vLLM's
    attribute: str  # its parameter: "weight", "bias"
    tensor: torch.nn.Parameter  # megatron-core's, in vLLM's layout
    output_order: torch.Tensor | None = None  # for a linear layer whose output columns differ in order:
    # vLLM's column c is megatron-core's output_order[c]


class BuildModel(Protocol):
    def __call__(
        self,
        hf_config: PretrainedConfig,
        parallel: ParallelConfig | None = None,
        params_dtype: torch.dtype = torch.float32,
        train_vision: bool = False,
        layers: LayerSettings | None = None,
    ) -> MegatronModule: ...


class LanguageModelConfig(Protocol):
    """The language model's `TransformerConfig` (and what GPTModel takes beside it): what the mappings'
    QKV and gated-MLP layouts read."""

    def __call__(
        self,
        hf_config: PretrainedConfig,
        parallel: ParallelConfig | None = None,
        params_dtype: torch.dtype = torch.float32,
        layers: LayerSettings | None = None,
    ) -> tuple[TransformerConfig, Any]: ...


class BuildTiny(Protocol):
    """Write a tiny random checkpoint of the family in HF layout, offline; `spec` overrides the family's
    tiny sizes (e.g. `num_kv_heads=2`, `tie_word_embeddings=True`)."""

    def __call__(
        self,
        out_dir: str | Path,
        *,
        vocab: str = "tiny",
        key_naming: str = "hub",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        **spec: Any,
    ) -> Path: ...


class TransformersBatch(Protocol):
    """Inputs of the Transformers model from token rows (image placeholders already expanded) and their
    images in order."""

    def __call__(
        self,
        rows: list[list[int]],
        images: list,
        *,
        pad_id: int,
        image_token_id: int,
        image_processor: Any,
        pad_side: str = "right",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class ImageInputs:
    """A checkpoint's image processor, and how its chat-templated prompts make room for the features of
    each image."""

    processor: Any  # Transformers' image processor: images → pixel_values, image_grid_thw
    expand: Callable[[str, torch.Tensor], str]  # (prompt, grids of its images) → placeholders expanded


@dataclass(frozen=True, eq=False)
class ModelFamily:
    """One model family: identity, megatron-core model, conversion, Hugging Face and vLLM sides, and the
    offline factories. Fields are plain callables and tables, so a family is declared in one place
    (`xr_nemo/models/<family>/bundle.py`) and registered once; a family is its one instance."""

    name: str  # `--family`, messages
    model_type: str  # config.json `model_type`
    architectures: tuple[str, ...]  # config.json `architectures` this bundle serves

    # megatron-core: the model (layer spec, rotary, vision tower, how image features enter), its config
    build_model: BuildModel
    language_model_config: LanguageModelConfig
    position_ids: Callable[[PretrainedConfig], PositionIds]  # the one place position ids are computed

    # conversion: the mapping table (hub names), the two HF key namings, where each HF tensor lives
    mappings: tuple[Mapping, ...]
    to_hub_name: Callable[[str], str]
    to_transformers_name: Callable[[str], str]
    tensor_part: Callable[[str], TensorPart]

    # Hugging Face and vLLM
    hf_model_class: type[PreTrainedModel]
    image_inputs: Callable[[str | Path], ImageInputs]  # from a checkpoint directory
    transformers_batch: TransformersBatch
    register_vllm: Callable[[], None]  # lets vLLM load the family in-process where torchvision is missing
    # (vLLM's model, ours) → every language-model tensor the engine can read in place from ours
    vllm_shared_tensors: Callable[[torch.nn.Module, torch.nn.Module], Iterator[SharedTensor]]

    # offline
    build_tiny: BuildTiny
    tiny_vocabs: tuple[str, ...]
    published: MappingOf[str, Callable[[], PretrainedConfig]]  # e.g. "7b" → the published config

    def hf_name(self, megatron_name: str) -> str:
        """The hub name of a Megatron parameter made of one HF tensor outside the decoder layers, such
        as `WORD_EMBEDDINGS` or `OUTPUT_LAYER`."""
        mapping, wildcard = find_mapping(megatron_name, self.mappings)
        (name,) = mapping.resolve(wildcard)[1]
        return name

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.architectures)})"
