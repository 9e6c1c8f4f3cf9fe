"""Hydra's override grammar (`key=value`, `+key=value`, `++key=value`, lists, quoting) on typed configs."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xr_nemo.config.bounds import validate
from xr_nemo.errors import ConfigError
from xr_nemo.io.yaml_file import read_yaml_mapping

T = TypeVar("T")

_PARALLEL = ("tensor_parallel", "pipeline_parallel", "context_parallel", "sequence_parallel")
_GENERATION = ("engine", "temperature", "top_p", "max_new_tokens", "thinking_budget", "tensor_parallel")
_GENERATION += ("gpu_memory_utilization", "kv_cache_gib", "seed")

# Other spellings that keep working: short forms of the parallel layout and megatron-core's names of the
# model's precision settings (as other Megatron front ends write them), the keys of earlier versions,
# and GRPO's `init.checkpoint=<SFT run>`. An alias applies only where its target exists in the config
# being overridden.
ALIASES = {
    **{
        f"parallel.{short}": f"parallel.{name}"
        for short, name in zip(("tp", "pp", "cp", "sp"), _PARALLEL, strict=True)
    },
    **{f"model.{name}": f"parallel.{name}" for name in (*_PARALLEL, "use_distributed_optimizer")},
    **{name: f"generation.{name}" for name in _GENERATION},  # eval and distill, before `generation.`
    "init.checkpoint": "model.checkpoint",
    "model.fp8_format": "model.fp8",
    "model.recompute_granularity": "model.recompute",
}


def _all_keys(node: DictConfig, prefix: str = "", missing_only: bool = False) -> list[str]:
    keys = []
    for key in node.keys():  # noqa: SIM118 (`in node` skips values still missing)
        if OmegaConf.is_missing(node, key):
            keys.append(f"{prefix}{key}")
        elif isinstance(node[key], DictConfig):
            keys += _all_keys(node[key], f"{prefix}{key}.", missing_only)
        elif not missing_only:
            keys.append(f"{prefix}{key}")
    return keys


def _first_line(exc: OmegaConfBaseException) -> str:
    return str(exc.msg).splitlines()[0]


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Return a copy of the dataclass `config` with `overrides` applied, type-checked and resolved."""
    node = OmegaConf.structured(config)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(
            str(exc), where="command-line overrides", fix="write overrides as key=value"
        ) from exc
    _warn_repeated(node, parsed)
    for override in parsed:
        key = _canonical(node, override.key_or_group)
        text = override.input_line
        try:
            _check_grammar(node, key, override)
            OmegaConf.update(node, key, override.value(), merge=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(
                f"invalid value for {key}: {_first_line(exc)}",
                where=f"override {text!r}",
                fix="check the type",
            ) from exc
    return to_object(node, type(config))


def _check_grammar(node: DictConfig, key: str, override: Override) -> None:
    """Hydra's rules on a typed config: `key=value` changes a key that exists, `+key=value` adds one that
    does not (only a free-form dict, such as eval's `data`, takes new keys), `++key=value` does either."""
    text = override.input_line
    if override.is_delete():
        raise ConfigError(f"cannot delete {key}: the config is typed", where=text)
    exists = _exists(node, key)
    if override.is_add() and exists:
        raise ConfigError(
            f"+{override.key_or_group} adds a key, and {key} is already in the config",
            where=f"override {text!r}",
            fix=f"write {text[1:]!r} to change it (or {'+' + text!r} to add or change it)",
        )
    if exists:
        return
    if not _in_open_dict(node, key):
        close = difflib.get_close_matches(key, _all_keys(node) + list(ALIASES), n=3)
        raise ConfigError(
            f"unknown config key {key!r}",
            where=f"override {text!r}",
            fix=f"did you mean {' or '.join(close)}?" if close else "see `config.yaml` of a run",
        )
    if not (override.is_add() or override.is_force_add()):
        raise ConfigError(
            f"{key} is not in the config, and `key=value` only changes keys that are",
            where=f"override {text!r}",
            fix=f"write {'+' + text!r} to add it",
        )


def _warn_repeated(node: DictConfig, parsed: list) -> None:
    """A key given twice with different values (also under an alias) is a slip, or an appended override
    meant to win: the last one applies, as in Hydra, and the warning names both, so it is never silent."""
    given: dict[str, tuple[str, object]] = {}
    for override in parsed:
        key = _canonical(node, override.key_or_group)
        text, value = override.input_line, override.value()
        if key in given and given[key][1] != value:
            print(
                f"xr-nemo: warning: {key} is given twice, {given[key][0]!r} then {text!r}; "
                "the last one applies",
                file=sys.stderr,
            )
        given[key] = (text, value)


def _canonical(node: DictConfig, key: str) -> str:
    target = ALIASES.get(key)
    return target if target is not None and not _exists(node, key) and _exists(node, target) else key


def _exists(node: DictConfig, key: str) -> bool:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(node, parent_key) if parent_key else node
    return isinstance(parent, DictConfig) and leaf in parent.keys()  # noqa: SIM118 (as above)


def _in_open_dict(node: DictConfig, key: str) -> bool:
    """True when `key` names an entry of a free-form dict field (e.g. eval's `data.<benchmark>`), where
    new keys are allowed; dataclass sections stay closed, so typos are still caught."""
    parent_key, _, _ = key.rpartition(".")
    parent = OmegaConf.select(node, parent_key) if parent_key else None
    return isinstance(parent, DictConfig) and OmegaConf.get_type(parent) is dict


def to_object(node: DictConfig, kind: type[T]) -> T:
    missing = _all_keys(node, missing_only=True)
    if missing:
        raise ConfigError(
            f"required config value(s) not set: {', '.join(missing)}",
            where="recipe + overrides",
            fix=" ".join(f"{key}=…" for key in missing),
        )
    try:
        OmegaConf.resolve(node)
        config = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve the config: {_first_line(exc)}", where=str(exc.full_key)) from exc
    validate(config)
    return config


def config_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def load_config(path: str | Path, kind: type[T]) -> T:
    """A saved `config.yaml` as the typed config `kind`, checked as overrides are."""
    tree = read_yaml_mapping(Path(path), where=f"--config {path}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(kind), OmegaConf.create(tree))
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"{path} is not a config of this command: {_first_line(exc)}",
            where=f"--config {path}",
            fix="pass the config.yaml of a run of the same stage",
        ) from exc
    return to_object(node, kind)
