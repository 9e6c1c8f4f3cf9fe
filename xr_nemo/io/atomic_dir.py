"""Write a directory, or a small text file, completely or not at all.

Everything goes into a hidden temporary sibling that is flushed to disk and renamed into place only once
the body has succeeded, so an interrupted write (or a crash of the machine) never leaves a half-written
output and never touches an existing one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xr_nemo.errors import XrNemoError

_STAGED, _SET_ASIDE = "tmp", "old"  # what the hidden siblings below are named after: `.<name>.<kind>-<id>`


def _hidden_sibling(path: Path, kind: str, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{suffix}")


def remove_interrupted_writes(directory: Path) -> None:
    """Delete the hidden siblings that writes killed mid-way left in `directory`: what they were staging,
    and outputs they had set aside to replace. Only where no write can be in progress (a directory only
    its lock holder writes to)."""
    left = re.compile(rf"\..+\.({_STAGED}|{_SET_ASIDE})-\w+")
    for path in directory.iterdir():
        if not left.fullmatch(path.name):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def write_text_atomically(path: Path, text: str) -> None:
    """Readers see the old text or the new one, never a mix (rename is atomic on one file system), and
    after a crash of the machine too: the text is on disk before the rename, the rename after it."""
    tmp = _hidden_sibling(path, _STAGED, str(os.getpid()))
    tmp.write_text(text, encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


@contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` when the block ends without an exception."""
    target = Path(target).resolve()
    if is_nonempty(target) and not overwrite:
        raise XrNemoError(
            f"{target} already exists and is not empty",
            where="output directory",
            fix="choose a new directory, or pass --overwrite to replace it",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_hidden_sibling(target, _STAGED, "").name, dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Put every file and directory under `root` on disk. Done once, after everything is written,
    rather than file by file as it is written: writes then never wait for the disk, and the kernel has
    already flushed most of the data in the background by the time this asks."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished `staging` directory to `target`. An existing target is renamed aside first and
    deleted only after the new one is in place, so a complete copy exists at every moment."""
    if not target.exists():
        os.replace(staging, target)
        return
    replaced = _hidden_sibling(target, _SET_ASIDE, str(os.getpid()))
    target.rename(replaced)
    staging.rename(target)
    if replaced.is_dir():
        shutil.rmtree(replaced)
    else:
        replaced.unlink()
