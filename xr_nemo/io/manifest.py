"""A directory's manifest: the size and digest of every file, recorded once all of them are written and
checked before any is read. A checkpoint that a crash, a full disk or a stray write damaged is then
refused with the file it failed on, instead of being loaded (or trained on) as if it were whole.

Digests are xxHash's XXH3-128: the threat is corruption, not an adversary, so a non-cryptographic hash
will do, and it runs at ~10 GB/s on one core — a small fraction of a checkpoint's load time
(docs/benchmarks.md). The manifest is written last and atomically: present means complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xxhash

from xr_nemo.errors import XrNemoError
from xr_nemo.io.atomic_dir import write_text_atomically

MANIFEST_FILE = "xr_nemo_manifest.json"
FORMAT = "xr-nemo/manifest/1"
HASH = "xxh3_128"
_BLOCK = 8 << 20  # read size: large enough that the per-call overhead vanishes

FileEntry = dict[str, Any]  # {"size": bytes, HASH: hex digest}


class DamagedError(XrNemoError):
    """A file of a manifested directory is missing, has another size, or holds other bytes."""

    def __init__(self, what: str, *, file: Path, fix: str | None = None) -> None:
        self.file = file
        fix = fix or "restore it from a copy, or use another checkpoint"
        super().__init__(what, where=str(file), fix=fix)


def file_digest(path: Path) -> str:
    """The file's XXH3-128, read in blocks (files of any size, constant memory)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        if hasattr(os, "posix_fadvise"):  # a larger read-ahead: from disk, reading is the cost
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while read := stream.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def listed_files(root: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every regular file under `root` (relative, `/`-separated, sorted), but the manifest itself and
    what lies under the subdirectories `skip`."""
    skipped = tuple(f"{name}/" for name in skip)
    names = []
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        if path.is_file() and not name.startswith((MANIFEST_FILE, f".{MANIFEST_FILE}", *skipped)):
            names.append(name)
    return sorted(names)


def describe(root: Path, names: Iterable[str]) -> dict[str, FileEntry]:
    """Size and digest of each named file."""
    return {name: {"size": (root / name).stat().st_size, HASH: file_digest(root / name)} for name in names}


def write_manifest(root: Path, files: dict[str, FileEntry], **sections: Any) -> Path:
    """Record `files` (from `describe`) and any other sections (shapes, layout) in `root`'s manifest."""
    body = {"format": FORMAT, "hash": HASH, **sections, "files": dict(sorted(files.items()))}
    path = root / MANIFEST_FILE
    write_text_atomically(path, _one_entry_a_line(body))
    return path


def _one_entry_a_line(body: dict[str, Any]) -> str:
    """JSON with one line per file, tensor or fact: readable and diffable, shapes kept whole."""
    sections = []
    for key, value in body.items():
        if isinstance(value, dict) and value:
            entries = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            sections.append(f" {json.dumps(key)}: {{\n{entries}\n }}")
        else:
            sections.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(sections) + "\n}\n"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of `root`, or None when it has none (written before manifests existed)."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedError(f"the manifest is not readable JSON ({error})", file=path) from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
        raise DamagedError(f"the manifest is not an {FORMAT} manifest", file=path)
    if body.get("hash") != HASH:
        raise DamagedError(
            f"the manifest's digests are {body.get('hash')!r}; this version reads {HASH}", file=path
        )
    return body


def check_sizes(root: Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with its recorded size (cheap: no file is read)."""
    for name, entry in sorted(manifest["files"].items()):
        path = root / name
        if not path.is_file():
            raise DamagedError(f"{name} is missing (the manifest lists it: {entry['size']} bytes)", file=path)
        size = path.stat().st_size
        if size != entry["size"]:
            cut = "truncated" if size < entry["size"] else "grown"
            raise DamagedError(
                f"{name} has {size} bytes, {entry['size']} when it was written ({cut})", file=path
            )


def check_digests(root: Path, manifest: dict[str, Any], names: Iterable[str]) -> None:
    """The named files (of the manifest's) hold the bytes they were written with."""
    for name in names:
        if file_digest(root / name) != manifest["files"][name][HASH]:
            raise DamagedError(
                f"{name} holds other bytes than when it was written (its {HASH} digest differs)",
                file=root / name,
            )


def shares(sizes: dict[str, int], parts: int) -> list[list[str]]:
    """Split files into `parts` lists of about equal bytes (largest first to the lightest part), the
    same on every process that asks: each process of a job then reads its own share."""
    loads = [0] * parts
    split: list[list[str]] = [[] for _ in range(parts)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        lightest = loads.index(min(loads))
        split[lightest].append(name)
        loads[lightest] += sizes[name]
    return [sorted(part) for part in split]
