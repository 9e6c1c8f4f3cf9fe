"""Bounds declared beside the fields they constrain, checked for the whole config at once.

`positive(8)` is a field whose default is 8 and whose value must be ≥ 1 (or None, when the field is
optional); `validate(config)` walks every section, names the full key of the first value out of bounds
and runs the sections' own `check` methods, before anything runs."""

from __future__ import annotations

import errno
import math
import os
from dataclasses import field, fields, is_dataclass
from pathlib import Path
from typing import Any

from xr_nemo.errors import ConfigError


def at_least(low: float, default: Any, *, open: bool = False) -> Any:
    """A field ≥ `low` (> `low` when `open`)."""
    return field(default=default, metadata={"low": low, "low_open": open})


def between(low: float, high: float, default: Any, *, low_open: bool = False, high_open: bool = False) -> Any:
    return field(
        default=default, metadata={"low": low, "low_open": low_open, "high": high, "high_open": high_open}
    )


def positive(default: Any) -> Any:
    """A count: ≥ 1."""
    return at_least(1, default)


def _interval(bounds: dict[str, Any]) -> str:
    low = f"{'(' if bounds.get('low_open') else '['}{bounds['low']:g}"
    high = f"{bounds['high']:g}{')' if bounds.get('high_open') else ']'}" if "high" in bounds else "∞)"
    return f"{low}, {high}"


def _in_bounds(value: float, bounds: dict[str, Any]) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    low, high = bounds["low"], bounds.get("high", math.inf)
    above = value > low if bounds.get("low_open") else value >= low
    below = value < high if bounds.get("high_open") else value <= high
    return above and below


def validate(config: Any, prefix: str = "") -> None:
    """Check every bounded field of the dataclass `config` and of its sections, then each section's own
    `check(prefix)` (rules between its keys), innermost first, so a rule sees values already in range.
    This is every check a config can pass or fail by itself; it runs whenever a config is made."""
    for spec in fields(config):
        value, key = getattr(config, spec.name), f"{prefix}{spec.name}"
        if is_dataclass(value):
            validate(value, f"{key}.")
        elif "low" in spec.metadata and value is not None and not _in_bounds(value, spec.metadata):
            optional = spec.default is None or "None" in str(spec.type)
            raise ConfigError(
                f"{key}={value} is out of range: it must lie in {_interval(spec.metadata)}"
                + (" (or be null)" if optional else ""),
                where=key,
                fix=f"set {key} to a value in {_interval(spec.metadata)}",
            )
    check = getattr(config, "check", None)
    if callable(check):
        check(prefix)


def _check_links(path: Path, key: str) -> None:
    """Every symbolic link on the way to `path` leads somewhere."""
    for link in [path, *path.parents]:
        if not link.is_symlink():
            continue
        try:
            link.resolve(strict=True)
        except RuntimeError as exc:  # Python 3.11 reports a loop so; 3.13 as OSError(ELOOP)
            raise _link_error(link, key, "is a symbolic link that loops back on itself") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link_error(link, key, "is a symbolic link that loops back on itself") from exc
            raise _link_error(
                link, key, f"is a symbolic link to {os.readlink(link)}, which does not exist"
            ) from exc


def _link_error(link: Path, key: str, what: str) -> ConfigError:
    return ConfigError(
        f"{link} {what}",
        where=key,
        fix=f"point {key} at a real directory, or fix the link (`ls -l {link}`)",
    )


def check_writable_directory(path: str | Path, key: str) -> None:
    """A directory that exists and can be written, or that can be created. An empty value is refused
    (it would mean the current directory); symbolic links are followed, and one that loops or points
    nowhere is refused."""
    if not str(path).strip():
        raise ConfigError(
            f"{key} is empty, which would write into the current directory",
            where=key,
            fix=f"set {key} to a directory of its own, e.g. {key}=runs/my_run",
        )
    path = Path(path)
    _check_links(path, key)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory", where=key, fix=f"choose another {key}")
    existing = path if path.exists() else next(p for p in path.absolute().parents if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{existing} is not writable, so {path} cannot be written",
            where=key,
            fix=f"choose a writable {key}, or fix the permissions of {existing}",
        )
