"""Qwen3-VL's Hugging Face key naming.

The hub's checkpoints (and `save_pretrained`) name the tensors as Transformers holds them in memory:
`model.language_model.*`, `model.visual.*`, `lm_head.*`; that is the one naming mappings speak. Some
trainers write the older flat naming of Qwen2.5-VL (`model.layers.*`, `visual.*`); it is read too.
"""

from __future__ import annotations

import re

from xr_nemo.models.family import TensorPart

_LAYER = re.compile(r"^model\.language_model\.layers\.(\d+)\.")


def to_hub_name(name: str) -> str:
    if name.startswith(("model.language_model.", "model.visual.")):
        return name
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    return name


def to_transformers_name(hub_name: str) -> str:
    """The hub naming is Transformers' own."""
    return hub_name


def tensor_part(hub_name: str) -> TensorPart:
    """Where a hub-named tensor lives: the vision tower, a decoder layer, the embedding, or the final
    norm and output layer."""
    if hub_name.startswith("model.visual."):
        return "vision"
    if (found := _LAYER.match(hub_name)) is not None:
        return int(found.group(1))
    if hub_name.startswith("model.language_model.embed_tokens"):
        return "embedding"
    return "output"
