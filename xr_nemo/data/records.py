"""Raw records from a hub dataset or local JSONL/JSON/Parquet files, each with where it came from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xr_nemo.errors import XrNemoError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


TURN_PAIR = "turn_pair"  # the field a .json list item (not an object) is read into


class DataError(XrNemoError):
    """A data file or record is malformed."""


@dataclass(frozen=True)
class Record:
    where: str  # "file:line" for JSONL/CSV, "file row N" for Parquet, "name row N" for the hub
    fields: dict[str, Any]
    origin: Path | None = None  # the local file it came from (relative image paths resolve against it)


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise DataError(
            f"no {'/'.join(LOCAL_SUFFIXES)} files in {path}", where=str(path), fix="point data.* at the files"
        )
    return files


def _jsonl(path: Path) -> Iterator[Record | DataError]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield DataError(f"not UTF-8 ({exc.reason} at byte {exc.start})", where=where)
                continue
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                yield DataError(f"malformed JSON: {exc.msg} at column {exc.colno}", where=where)
                continue
            if not isinstance(fields, dict):
                yield DataError(f"expected a JSON object, got {type(fields).__name__}", where=where)
                continue
            yield Record(where, fields, path)


def _rows(rows: Any, label: str, origin: Path | None = None) -> Iterator[Record]:
    for index, fields in enumerate(rows):
        yield Record(f"{label} row {index}", dict(fields), origin)


def _csv(path: Path) -> Iterator[Record | DataError]:
    """A header row, then one record per row; `where` is the line the row ends on."""
    import csv

    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield Record(f"{path}:{reader.line_num}", dict(row), path)
    except (UnicodeDecodeError, csv.Error) as exc:
        yield DataError(f"cannot read CSV: {exc}", where=str(path), fix="use UTF-8 CSV with a header row")


def read_records(
    source: str, split: str = "train", config: str | None = None
) -> Iterator[Record | DataError]:
    """Records of `source` in file order. Malformed ones come back as `DataError`s (not raised), so the
    caller decides whether to stop or skip and count."""
    path = Path(source)
    if path.exists():
        for file in _local_files(path):
            if file.suffix == ".jsonl":
                yield from _jsonl(file)
            elif file.suffix == ".json":
                yield from _json(file)
            elif file.suffix == ".csv":
                yield from _csv(file)
            else:
                yield from _parquet(file)
        return
    if source.startswith((".", "/", "~")) or source.endswith(LOCAL_SUFFIXES):
        raise DataError(f"{source} does not exist", where="data path", fix="check the path")
    yield from _hub(source, split, config)


def _json(path: Path) -> Iterator[Record | DataError]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield DataError(f"cannot read JSON: {exc}", where=str(path), fix="use UTF-8 JSON or JSONL")
        return
    if not isinstance(rows, list):
        yield DataError("a .json data file must hold a list of objects", where=str(path))
        return
    for index, fields in enumerate(rows):
        where = f"{path} item {index}"
        if isinstance(fields, list):  # Orz-Math's [question turn, answer turn] pairs
            yield Record(where, {TURN_PAIR: fields}, path)
        elif isinstance(fields, dict):
            yield Record(where, fields, path)
        else:
            yield DataError("not an object", where=where)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    yield from _rows(pq.read_table(path).to_pylist(), str(path), path)


def _hub(name: str, split: str, config: str | None) -> Iterator[Record]:
    import datasets

    label = f"{name}[{config}]" if config else name
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many kinds; all mean "cannot get it"
        raise DataError(
            f"cannot load dataset {label!r} (split {split!r}): {exc}",
            where="data.train / data.validation",
            fix="check the name and your network/HF_HOME cache, or pass a local file",
        ) from exc
    yield from _rows(dataset, f"{label}[{split}]")
