"""A YAML mapping read from a file a user names, safely: a regular file of bounded size, UTF-8 text, and
no aliases.

YAML aliases (`*name`) let a few lines expand into exponentially many values (the "billion laughs"), and
the configs xr-nemo writes never use them, so they are refused rather than bounded. A file that is not a
regular file (a FIFO would block the read forever, a device never ends) is refused before it is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from omegaconf._utils import get_yaml_loader

from xr_nemo.errors import ConfigError
from xr_nemo.io.file_kind import file_kind

MAX_CONFIG_BYTES = 4 * 1024**2  # a resolved config is a few KB


def _loader() -> type:
    """OmegaConf's own YAML loader (its number and duplicate-key rules), refusing aliases."""

    class NoAliasLoader(get_yaml_loader()):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"found the alias *{event.anchor}: aliases are not accepted in a config",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_yaml_mapping(path: Path, where: str, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """The mapping at the top of the YAML file `path`, or a `ConfigError` naming `where` and a fix."""
    fix = "pass the config.yaml a run wrote (RUN_DIR/config.yaml)"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", where=where, fix=fix) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is {file_kind(info.st_mode)}, not a config file", where=where, fix=fix)
    if info.st_size > max_bytes:
        raise ConfigError(
            f"{path} holds {info.st_size:,} bytes; a config file may hold at most {max_bytes:,}",
            where=where,
            fix=fix,
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", where=where, fix=fix) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): not a YAML config",
            where=where,
            fix=fix,
        ) from exc
    try:
        tree = yaml.load(text, Loader=_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path} is not a YAML config: {exc.problem}{place}", where=where, fix=fix) from exc
    except yaml.YAMLError as exc:  # a reader error: characters YAML does not allow (binary data)
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not a YAML config: {problem}", where=where, fix=fix) from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} nests values too deeply to be a config", where=where, fix=fix) from exc
    if not isinstance(tree, dict):
        found = "nothing" if tree is None else f"a {type(tree).__name__}"
        raise ConfigError(
            f"{path} holds {found}, not a mapping of sections (run:, model:, trainer:, …)",
            where=where,
            fix=fix,
        )
    return tree
