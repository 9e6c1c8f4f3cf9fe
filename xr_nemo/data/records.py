"""Raw records from a hub dataset or local JSONL/JSON/Parquet/CSV files, each with where it came from.

A folder is read for the requested split when its files name splits (`test.jsonl`,
`validation-00000-of-00001.parquet`, `test_2.csv`, `dev/part.json`, …); `.json` files may hold a list
of objects, an object of id → object (MathVista's `testmini.json`, PubMedQA's `ori_pqal.json`) or JSON
lines (MedMCQA's `dev.json`).
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from xr_nemo.errors import XrNemoError
from xr_nemo.io.file_kind import file_kind

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_FORMATS = "JSON lines (.jsonl), JSON (.json), Parquet (.parquet) or CSV (.csv)"

# Reading bounds: one JSON line (a record) is read up to this size, so a file without line breaks cannot
# take all memory; a .json file holding one JSON value is parsed whole, and so only up to this size (JSON
# lines, in a .json file too, are streamed at any size).
MAX_LINE_BYTES = 16 * 1024**2
MAX_JSON_BYTES = 256 * 1024**2


TURN_PAIR = "turn_pair"  # the field a .json list item (not an object) is read into

# Split names a file or folder may carry; a requested split also matches its aliases when no file is
# named for it exactly (MedMCQA's release calls validation `dev`, SLAKE's `validate`, MMStar's `val`).
SPLIT_NAMES = frozenset({"train", "validation", "valid", "val", "validate", "dev", "test", "testmini"})
_VALIDATION = ("validation", "val", "valid", "validate", "dev")
SPLIT_ALIASES = {name: _VALIDATION for name in _VALIDATION}
_SHARD = r"(?:[-_]\d.*)?"  # `test-00000-of-00001`, `test_2`


class DataError(XrNemoError):
    """A data file or record is malformed."""


@dataclass(frozen=True)
class Record:
    where: str  # "file:line" for JSONL/CSV, "file row N" for Parquet, "name row N" for the hub
    fields: dict[str, Any]
    origin: Path | None = None  # the local file it came from (relative image paths resolve against it)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _size(count: int) -> str:
    return f"{count / 1024**2:g} MiB" if count >= 1024**2 else f"{count:,} bytes"


def _check_regular(path: Path) -> None:
    """A FIFO, a device or a socket is not a data file: reading one blocks or never ends."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise DataError(
            f"{path} is {file_kind(mode)}, not a data file",
            where=str(path),
            fix="copy the data into a regular file (or a folder of files) and point at that",
        )


def _local_files(path: Path, split: str) -> list[Path]:
    _check_regular(path)
    if path.is_file():
        if _suffix(path) not in LOCAL_SUFFIXES:
            raise DataError(
                f"cannot tell the format of {path.name} from its name",
                where=str(path),
                fix=f"give the file a name that ends in the format it holds: {_FORMATS}",
            )
        return [path]
    named = sorted(p for p in path.rglob("*") if _suffix(p) in LOCAL_SUFFIXES and p.exists())
    for candidate in named:
        _check_regular(candidate)
    files = [p for p in named if p.is_file()]
    if not files:
        raise DataError(
            f"no {'/'.join(LOCAL_SUFFIXES)} files in {path}", where=str(path), fix="point data.* at the files"
        )
    return split_files(path, files, split)


def file_split(root: Path, file: Path, requested: str | None = None) -> str | None:
    """The split `file` (under the folder `root`) is named for: its own name (`test.jsonl`,
    `test-00000-of-00001.parquet`, `test_2.csv`), else the nearest folder below `root` named for one."""
    names = SPLIT_NAMES | ({requested.lower()} if requested else set())
    folders = file.relative_to(root).parts[:-1]
    for part in (file.stem, *reversed(folders)):
        for name in names:
            if re.fullmatch(re.escape(name) + _SHARD, part, flags=re.IGNORECASE):
                return name
    return None


def split_files(root: Path, files: list[Path], split: str) -> list[Path]:
    """The files of `split` when the folder's files name splits; all of them when none does. A folder
    whose files name splits but not this one is an error, not a silent read of another split."""
    named = {file: file_split(root, file, split) for file in files}
    found = sorted({name for name in named.values() if name is not None})
    if not found:
        return files
    wanted = split.lower()
    for candidates in ((wanted,), SPLIT_ALIASES.get(wanted, ())):
        chosen = [file for file in files if named[file] in candidates]
        if chosen:
            return chosen
    raise DataError(
        f"{root} holds files of the split(s) {', '.join(found)} but none of split {split!r}",
        where=str(root),
        fix="point at the file to read itself, or choose one of those splits",
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key(s) {', '.join(map(repr, repeated))} appear more than once in one object")
    return dict(pairs)


def _not_text(value: Any) -> str | None:
    """The first string inside `value` that is not valid Unicode text (a lone UTF-16 surrogate such as
    "\\ud800", which JSON allows and no tokenizer can encode), shown escaped."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()[:80]
        return None
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((found for child in children if (found := _not_text(child)) is not None), None)


def parse_json(text: str) -> Any:
    """JSON as data files need it: duplicate keys and strings that are not text are errors (ValueError),
    not silently resolved."""
    value = json.loads(text, object_pairs_hook=_unique_keys)
    bad = _not_text(value)
    if bad is not None:
        raise ValueError(f"a string holds a lone surrogate, which is not text: {bad!r}")
    return value


def _lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The lines of `handle`, each read up to MAX_LINE_BYTES: a longer one is None (and skipped to its end
    in bounded pieces), so one huge line never sits in memory."""
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _jsonl(path: Path) -> Iterator[Record | DataError]:
    with path.open("rb") as handle:
        for number, raw in enumerate(_lines(handle), start=1):
            where = f"{path}:{number}"
            if raw is None:
                yield DataError(
                    f"the line is longer than {_size(MAX_LINE_BYTES)}, the most one record may hold",
                    where=where,
                    fix="split the record, or check that the file has one record per line",
                )
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is fine
            except UnicodeDecodeError as exc:
                yield DataError(
                    f"not UTF-8 ({exc.reason} at byte {exc.start})",
                    where=where,
                    fix="re-encode the file as UTF-8 (e.g. `iconv -t UTF-8`)",
                )
                continue
            if not line.strip():
                continue
            try:
                fields = parse_json(line)
            except json.JSONDecodeError as exc:
                place = f"{'' if exc.msg.endswith(' at') else ' at'} column {exc.colno}"
                yield DataError(f"malformed JSON: {exc.msg}{place}", where=where)
                continue
            except ValueError as exc:
                yield DataError(str(exc), where=where, fix="fix or drop the record")
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
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield Record(f"{path}:{reader.line_num}", dict(row), path)
    except (UnicodeDecodeError, csv.Error) as exc:
        yield DataError(f"cannot read CSV: {exc}", where=str(path), fix="use UTF-8 CSV with a header row")


def read_records(
    source: str, split: str = "train", config: str | None = None
) -> Iterator[Record | DataError]:
    """Records of `source` in file order. Malformed ones come back as `DataError`s (not raised), so the
    caller decides whether to stop or skip and count. A folder is read for `split` (see `split_files`);
    a single file is read whatever its name."""
    path = Path(source)
    if path.exists():
        readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
        for file in _local_files(path, split):
            yield from readers[_suffix(file)](file)
        return
    if _looks_local(source):
        raise DataError(f"{source} does not exist", where="data path", fix="check the path")
    yield from _hub(source, split, config)


def _looks_local(source: str) -> bool:
    """A path that is not there, rather than a hub name (`org/name`): so a typo is reported at once
    instead of after the hub's retries."""
    path = Path(source)
    if source.startswith((".", "/", "~")) or len(path.parts) > 2:
        return True
    if len(path.parts) == 1:
        return bool(path.suffix)  # `train.jsonl`; a bare name may be a legacy hub id (`gsm8k`)
    return _suffix(path) in LOCAL_SUFFIXES or Path(path.parts[0]).is_dir()


def _json(path: Path) -> Iterator[Record | DataError]:
    if path.stat().st_size > MAX_JSON_BYTES:
        if _first_line_is_object(path):  # JSON lines: streamed whatever the size
            yield from _jsonl(path)
            return
        yield DataError(
            f"a .json file holding one JSON value is read whole, so at most {_size(MAX_JSON_BYTES)}; "
            f"this one holds {_size(path.stat().st_size)}",
            where=str(path),
            fix=f"convert it to JSON lines, which are streamed: `jq -c '.[]' {path.name} > "
            f"{path.stem}.jsonl`",
        )
        return
    try:
        content = path.read_text(encoding="utf-8-sig")
        rows = parse_json(content)
    except json.JSONDecodeError as exc:
        if _is_json_lines(content):  # MedMCQA's train.json/dev.json: one object per line
            yield from _jsonl(path)
            return
        yield DataError(f"cannot read JSON: {exc}", where=str(path), fix="use UTF-8 JSON or JSONL")
        return
    except (UnicodeDecodeError, ValueError) as exc:
        yield DataError(f"cannot read JSON: {exc}", where=str(path), fix="use UTF-8 JSON or JSONL")
        return
    if isinstance(rows, dict):
        yield from _keyed(path, rows)
        return
    if not isinstance(rows, list):
        yield DataError(
            "a .json data file must hold a list of objects or an object of id → object", where=str(path)
        )
        return
    for index, fields in enumerate(rows):
        where = f"{path} item {index}"
        if isinstance(fields, list):  # Orz-Math's [question turn, answer turn] pairs
            yield Record(where, {TURN_PAIR: fields}, path)
        elif isinstance(fields, dict):
            yield Record(where, fields, path)
        else:
            yield DataError("not an object", where=where)


def _first_line_is_object(path: Path) -> bool:
    with path.open("rb") as handle:
        for raw in _lines(handle):
            if raw is None:
                return False
            if raw.strip():
                return _is_json_lines(raw.decode("utf-8-sig", "replace"))
    return False


def _is_json_lines(content: str) -> bool:
    """Whether text that is not one JSON value is JSON lines: its first non-blank line is an object on
    its own (the lines after it are then read, and reported, one by one)."""
    first = next((line for line in content.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _keyed(path: Path, rows: dict[str, Any]) -> Iterator[Record | DataError]:
    """An object of id → record (MathVista's `testmini.json`, PubMedQA's `ori_pqal.json`): each value is
    a record, and its key becomes its `id` when it has none. An object most of whose values are not
    objects is not a data file."""
    objects = sum(isinstance(value, dict) for value in rows.values())
    if not rows or objects * 2 <= len(rows):
        yield DataError(
            "a .json data file must hold a list of objects or an object of id → object",
            where=str(path),
            fix="use JSON lines, a list of records, or an object whose values are the records",
        )
        return
    for key, fields in rows.items():
        where = f'{path} key "{key}"'
        if isinstance(fields, dict):
            yield Record(where, fields if "id" in fields else {"id": key, **fields}, path)
        else:
            yield DataError(f"not an object ({type(fields).__name__})", where=where)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read Parquet: {str(exc).splitlines()[0]}",
            where=str(path),
            fix="check that the file is complete Parquet (or name it for the format it holds)",
        ) from exc
    yield from _rows(table.to_pylist(), str(path), path)


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
