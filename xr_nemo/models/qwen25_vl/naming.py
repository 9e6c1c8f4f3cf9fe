"""The two Hugging Face key namings of Qwen2.5-VL checkpoints.

The hub (and `save_pretrained`) writes `model.layers.*`, `model.embed_tokens.*`, `model.norm.*`,
`visual.*`, `lm_head.*`; Transformers 5 names the same parameters `model.language_model.*` and
`model.visual.*` in memory, and some checkpoints carry those names. Mappings speak the hub naming.
"""

from __future__ import annotations

import re

from xr_nemo.models.family import TensorPart

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def to_hub_name(name: str) -> str:
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def to_transformers_name(hub_name: str) -> str:
    """The in-memory Transformers 5 name of a hub-named tensor."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model."):
        return "model.language_model." + hub_name[len("model.") :]
    return hub_name


def tensor_part(hub_name: str) -> TensorPart:
    """Where a hub-named tensor lives: the vision tower, a decoder layer, the embedding, or the final
    norm and output layer."""
    if hub_name.startswith("visual."):
        return "vision"
    if (found := _LAYER.match(hub_name)) is not None:
        return int(found.group(1))
    if hub_name.startswith("model.embed_tokens"):
        return "embedding"
    return "output"
