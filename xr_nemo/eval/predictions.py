"""Prediction files: `predictions/<benchmark>.jsonl`, one row per finished item, appended and fsynced
after every generation batch. Data-parallel replicas append to `<benchmark>.part-<r>.jsonl` each; the
parts are merged into the benchmark's file (in item order) once all replicas finish. Reading takes the
union of the file and any parts, so a resumed evaluation never regenerates a finished item, whatever
the replica count before and after."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xr_nemo.io.atomic_dir import write_text_atomically


def predictions_path(out_dir: Path, benchmark: str, replica: int | None = None) -> Path:
    name = f"{benchmark}.jsonl" if replica is None else f"{benchmark}.part-{replica}.jsonl"
    return out_dir / "predictions" / name


def _parts(out_dir: Path, benchmark: str) -> list[Path]:
    return sorted((out_dir / "predictions").glob(f"{benchmark}.part-*.jsonl"))


def read_predictions(out_dir: Path, benchmark: str) -> dict[str, dict]:
    """Finished rows by item id; a last line cut short by an interruption is ignored."""
    rows = {}
    for path in [predictions_path(out_dir, benchmark), *_parts(out_dir, benchmark)]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["id"]] = row
    return rows


def _drop_cut_line(path: Path) -> None:
    """Truncate a last line an interruption cut short, so the next row starts on a line of its own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def append_predictions(path: Path, rows: list[dict]) -> None:
    _drop_cut_line(path)
    with path.open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def merge_parts(out_dir: Path, benchmark: str, order: list[str]) -> None:
    """Rewrite the benchmark's file with every finished row (those of `order` first, in that order),
    atomically, then remove the parts it absorbed."""
    parts = _parts(out_dir, benchmark)
    if not parts:
        return
    rows = read_predictions(out_dir, benchmark)
    ranked = [rows.pop(item_id) for item_id in order if item_id in rows] + list(rows.values())
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ranked)
    write_text_atomically(predictions_path(out_dir, benchmark), text)
    for part in parts:
        part.unlink()
