"""No output may destroy an input: where a command may write a directory, and what `--overwrite` may
replace.

An output is refused when it is, contains or lies inside one of the command's inputs, or when it is,
contains or lies inside a run directory — except the run's own place for that kind of output (a run's
`hf/` export, its `base_checkpoint/` import), which training itself writes. `--overwrite` replaces only
an earlier output of the same kind, recognised by its own marker (or found in that kind's own place),
never a directory of anything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xr_nemo.errors import XrNemoError
from xr_nemo.io.atomic_dir import is_nonempty
from xr_nemo.io.run_lock import LOCK_FILE

# How a run directory is recognised (its layout is xr_nemo/run_dir.py's): the resolved config beside the
# checkpoints, the metrics, or the lock of a launch that has not written a checkpoint yet.
RUN_CONFIG = "config.yaml"
RUN_CONTENTS = ("checkpoints", "metrics.jsonl", LOCK_FILE)
_SEARCH_LIMIT = 10_000  # entries looked at for run directories inside an output about to be replaced


class OutputRefused(XrNemoError):
    """Writing this output would destroy something that is not an earlier output of the same kind."""


@dataclass(frozen=True)
class OutputKind:
    command: str  # "convert export"
    marker: str  # what an earlier output carries, in words: "xr_nemo.json of format xr-nemo/hf-export"
    run_slot: str  # its own place in a run directory: "hf"
    is_one: Callable[[Path], bool]  # recognises an earlier output of this kind


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file() and any((path / name).exists() for name in RUN_CONTENTS)


def _resolved(path: Path, where: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop (RuntimeError on Python 3.11)
        raise OutputRefused(
            f"{path} cannot be resolved: {exc}",
            where=where,
            fix="fix the symbolic link or choose another path",
        ) from exc


def _inside(path: Path, parent: Path) -> bool:
    return path != parent and path.is_relative_to(parent)


def check_output(
    out: str | Path,
    inputs: Sequence[str | Path],
    kind: OutputKind,
    overwrite: bool,
    where: str,
    own_places: Sequence[str | Path] = (),
) -> None:
    """Raise `OutputRefused` unless writing `out` (replacing it with `overwrite`) destroys nothing but an
    earlier output of `kind`. `own_places` are further places that belong to this output (a checkpoint's
    own `hf/`, which the export contains)."""
    target = _resolved(Path(out), where)
    sources = [_resolved(Path(path), where) for path in inputs]
    places = {_resolved(Path(path), where) for path in own_places}
    fix_new = "choose an output directory outside the input and outside any run directory"
    if is_run_dir(target):
        raise OutputRefused(f"the output {target} is a run directory", where=where, fix=fix_new)
    for source in sources:
        if target == source:
            raise OutputRefused(f"the output {target} is the input", where=where, fix=fix_new)
        if _inside(source, target):
            raise OutputRefused(f"the output {target} contains the input {source}", where=where, fix=fix_new)
        if _inside(target, source) and target not in places:
            raise OutputRefused(
                f"the output {target} lies inside the input {source}", where=where, fix=fix_new
            )
    in_slot = target in places
    for parent in target.parents:
        if is_run_dir(parent):
            if target != parent / kind.run_slot and not in_slot:
                raise OutputRefused(
                    f"the output {target} lies inside the run directory {parent}",
                    where=where,
                    fix=f"{fix_new} (the run's own `{kind.command}` output is {parent / kind.run_slot})",
                )
            in_slot = True
    if not is_nonempty(target):
        return
    replace = f"--overwrite replaces only an earlier output of `{kind.command}` (one with {kind.marker})"
    if not overwrite:
        raise OutputRefused(
            f"{target} already exists and is not empty",
            where=where,
            fix=f"choose a new directory; {replace}",
        )
    if not (in_slot or kind.is_one(target)):
        raise OutputRefused(
            f"{target} is not an earlier output of `{kind.command}` ({kind.marker} is missing), so "
            "--overwrite does not replace it",
            where=where,
            fix=f"choose a new (or empty) directory; {replace}",
        )
    problem = _run_dir_below(target)
    if problem is not None:
        raise OutputRefused(f"the output {target} {problem}", where=where, fix=fix_new)


def _run_dir_below(root: Path) -> str | None:
    """Why `root` must not be replaced although it carries the marker: it holds a run directory (someone
    put one into an earlier output), or more entries than an output has, which are not all looked at."""
    seen = 0
    for directory, names, files in os.walk(root):
        seen += len(names) + len(files)
        if seen > _SEARCH_LIMIT:
            return f"holds more than {_SEARCH_LIMIT:,} entries, more than an earlier output would"
        for name in names:
            if is_run_dir(Path(directory) / name):
                return f"contains the run directory {Path(directory) / name}"
    return None
