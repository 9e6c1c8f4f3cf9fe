"""The model families xr-nemo supports, and the one way to find a checkpoint's: by the `architectures`
(and `model_type`) of its `config.json`. A checkpoint of any other architecture is refused here, with the
supported ones listed."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PretrainedConfig

from xr_nemo.errors import ConfigError
from xr_nemo.models.family import ModelFamily
from xr_nemo.models.qwen3_vl.bundle import QWEN3_VL
from xr_nemo.models.qwen25_vl.bundle import QWEN25_VL

FAMILIES: tuple[ModelFamily, ...] = (QWEN25_VL, QWEN3_VL)
DEFAULT_FAMILY = QWEN25_VL.name  # the family of the X-Reasoner recipes, the tiny model and the demo


def family_names() -> list[str]:
    return [family.name for family in FAMILIES]


def family_named(name: str) -> ModelFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ConfigError(
        f"unknown model family {name!r}", where="--family", fix=f"use one of {', '.join(family_names())}"
    )


def _find(model_type: str | None, architectures: list[str], where: str) -> ModelFamily:
    """Architectures decide; a config that lists none is taken by its model type."""
    for family in FAMILIES:
        if model_type == family.model_type and (
            not architectures or set(architectures) & set(family.architectures)
        ):
            return family
    raise ConfigError(
        f"unsupported architecture {architectures or model_type!r}",
        where=where,
        fix="xr-nemo supports " + "; ".join(family.describe() for family in FAMILIES),
    )


def family_of(hf_config: PretrainedConfig, where: str = "config.json") -> ModelFamily:
    """The family of a loaded HF config (`where` names its file in the error)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    return _find(getattr(hf_config, "model_type", None), architectures, where)


def family_for_dir(directory: str | Path) -> ModelFamily:
    """The family of the HF checkpoint (or side-file) directory `directory`, from its config.json alone."""
    config_file = Path(directory) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot read the model config: {error}",
            where=str(config_file),
            fix="point at a Hugging Face checkpoint directory (config.json, weights, tokenizer)",
        ) from error
    if not isinstance(config, dict):
        raise ConfigError("config.json is not a JSON object", where=str(config_file))
    return _find(config.get("model_type"), list(config.get("architectures") or []), str(config_file))
