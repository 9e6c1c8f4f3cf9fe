"""Prediction files: `predictions/<benchmark>.jsonl`, one row per finished item, appended and fsynced
after every generation batch. Data-parallel replicas append to `<benchmark>.part-<r>.jsonl` each; the
parts are merged into the benchmark's file (in item order) once all replicas finish. Reading takes the
union of the file and any parts (a later row of an id replaces an earlier one: a regenerated item is
appended), so a resumed evaluation never regenerates a finished item, whatever the replica count
before and after. A damaged line (not UTF-8, not JSON, no item id, cut short) is reported with its
file:line and left out; `settle` then rewrites the file without it, keeping every other line as it was."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from xr_nemo.io.atomic_dir import write_text_atomically


def predictions_path(out_dir: Path, benchmark: str, replica: int | None = None) -> Path:
    name = f"{benchmark}.jsonl" if replica is None else f"{benchmark}.part-{replica}.jsonl"
    return out_dir / "predictions" / name


def _parts(out_dir: Path, benchmark: str) -> list[Path]:
    return sorted((out_dir / "predictions").glob(f"{benchmark}.part-*.jsonl"))


@dataclass
class Stored:
    """What a benchmark's prediction files hold."""

    rows: dict[str, dict] = field(default_factory=dict)  # by item id: the last row of each
    lines: dict[str, str] = field(default_factory=dict)  # each of those rows' line, as written
    damaged: list[str] = field(default_factory=list)  # "file:line: why", lines left out
    superseded: int = 0  # rows a later row of the same id replaced


def parse_row(line: bytes) -> tuple[dict | None, str | None]:
    """A prediction line → (its row, None), or (None, why it is not one)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 at byte {error.start + 1} (a line cut inside a multi-byte character?)"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg} at column {error.colno})"
    if not isinstance(row, dict):
        return None, f"not a JSON object but {type(row).__name__}"
    if not isinstance(row.get("id"), str):
        return None, "no item id (`id` is missing or not a string)"
    return row, None


def read_stored(out_dir: Path, benchmark: str) -> Stored:
    """Every row of the file and its parts, and the damaged lines left out (a last line without its
    line end is one an interruption cut short, unless it is a whole row)."""
    stored = Stored()
    for path in [predictions_path(out_dir, benchmark), *_parts(out_dir, benchmark)]:
        if not path.exists():
            continue
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row, why = parse_row(line)
            if row is None:
                if number == len(lines):
                    why += "; the last line, without its line end: cut short by an interruption"
                stored.damaged.append(f"{path}:{number}: {why}")
                continue
            item_id = row["id"]
            stored.superseded += item_id in stored.rows
            for held in (stored.rows, stored.lines):  # the later row replaces the earlier one
                held.pop(item_id, None)
            stored.rows[item_id] = row
            stored.lines[item_id] = line.decode("utf-8")
    return stored


def read_predictions(out_dir: Path, benchmark: str) -> dict[str, dict]:
    """Finished rows by item id; damaged lines are left out."""
    return read_stored(out_dir, benchmark).rows


def _end_last_line(path: Path) -> None:
    """Before appending: a last line without its line end gets one when it is a whole row, and is cut
    off when an interruption cut it short, so the next row starts on a line of its own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        start = data.rfind(b"\n") + 1
        if parse_row(data[start:])[0] is not None:
            handle.write(b"\n")
        else:
            handle.truncate(start)


def append_predictions(path: Path, rows: list[dict]) -> None:
    _end_last_line(path)
    with path.open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def settle(out_dir: Path, benchmark: str, order: list[str]) -> None:
    """Once generation is over: merge the replicas' parts into the benchmark's file and drop damaged
    lines and replaced rows, rewriting it atomically — the rows of `order` first, in that order, each
    line as it was written. A file with none of these is left as it is."""
    parts = _parts(out_dir, benchmark)
    stored = read_stored(out_dir, benchmark)
    if not parts and not stored.damaged and not stored.superseded:
        return
    lines = dict(stored.lines)
    ranked = [lines.pop(item_id) for item_id in order if item_id in lines] + list(lines.values())
    write_text_atomically(predictions_path(out_dir, benchmark), "".join(line + "\n" for line in ranked))
    for part in parts:
        part.unlink()
