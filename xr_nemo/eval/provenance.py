"""What produced a prediction, so that a rerun reuses only rows that the same model, item and settings
would produce again.

Every prediction row carries a `record`: the identity of the model's files, a digest of the item as
the model saw it (question, options, images, gold and metadata), a digest of the generation settings
(samples, template, engine, dtype, temperature, top_p, max_new_tokens, thinking_budget) and the item's
first seed. A rerun compares each stored row's record with the one it would write now: equal rows are
reused, the rest are regenerated, counted by the first difference found. The seed counts only when
sampling (temperature > 0); greedy outputs do not depend on it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from xr_nemo.tasks.benchmark import EvalItem

RECORD = "record"  # the row key that holds it
DIGEST_CHARS = 16  # 64 bits of sha256: no collision among any realistic number of models or items

# The files of a model directory that decide its outputs: weights (and their index), config, tokenizer,
# chat template, image processor. Not `xr_nemo.json` (where an export came from, not what it holds), nor
# anything else kept there (an evaluation's own outputs, notes).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
_MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
}
_WHOLE_BELOW = 64 * 1024**2  # files up to this size are hashed whole
_WINDOW = 1024**2  # else: this many bytes at the start, the end and 14 evenly spaced places between
_WINDOWS = 16

# Why a stored row is not reused, in the order they are checked, as the counts are printed.
REASONS = {
    "missing": "missing",
    "no_record": "without a record (written before records were kept)",
    "model": "from another model",
    "generation": "with other generation settings",
    "item": "changed",
    "seed": "with another seed (the item moved in the file)",
    "malformed": "malformed",
}
_SAMPLE_LISTS = ("outputs", "answers", "methods", "correct", "forced_exit")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def _file_digest(path: Path, size: int) -> bytes:
    """The whole file's sha256 when small; for a weight shard of gigabytes, sha256 of windows spread
    over it (every trained tensor changes throughout, so a new checkpoint changes them)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= _WHOLE_BELOW:
            for block in iter(lambda: handle.read(_WINDOW), b""):
                hasher.update(block)
            return hasher.digest()
        for k in range(_WINDOWS):
            handle.seek((size - _WINDOW) * k // (_WINDOWS - 1))
            hasher.update(handle.read(_WINDOW))
    return hasher.digest()


def model_identity(model_dir: Path) -> str:
    """A digest of what the model directory holds (not where it is): each deciding file's name, size and
    contents. Cheap for a 15 GB model: at most 16 MiB is read per weight file."""
    hasher = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        deciding = path.name in _MODEL_FILES or path.name.endswith(_WEIGHT_SUFFIXES)
        if not deciding or not path.is_file():
            continue
        size = path.stat().st_size
        hasher.update(f"{path.name}\0{size}\0".encode())
        hasher.update(_file_digest(path, size))
    return hasher.hexdigest()[:DIGEST_CHARS]


def _image_digest(source: Any) -> str:
    if isinstance(source, Image.Image):
        return _digest(f"{source.mode}{source.size}".encode() + source.tobytes())
    if isinstance(source, Path):
        try:
            return _digest(source.read_bytes())
        except OSError:  # gone since the items were read: the prompt builder reports it
            return f"unreadable {source}"
    return _digest(bytes(source))


def item_digest(item: EvalItem) -> str:
    """The item as the model saw it and as it is judged: question, options, images (their bytes), gold
    and metadata — not its place in the file."""
    content = {
        "question": item.question,
        "options": item.options,
        "gold": item.gold,
        "meta": item.meta,
        "images": [_image_digest(image) for image in item.images],
    }
    return _digest(json.dumps(content, sort_keys=True, ensure_ascii=False, default=str).encode())


def generation_settings(config: Any, engine: str) -> dict[str, Any]:
    """The settings a row's outputs depend on (`config`: an `EvalConfig`; `engine`: the kind that
    generates the benchmark). Not the seed (per row, below), nor batch size, replicas, parallelism or
    memory, which do not change what is generated."""
    generation = config.generation
    return {
        "samples": config.samples,
        "template": str(config.template),
        "engine": str(engine),
        "dtype": str(config.dtype),
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "max_new_tokens": generation.max_new_tokens,
        "thinking_budget": generation.thinking_budget,
    }


@dataclass(frozen=True)
class Producer:
    """What would generate a benchmark's rows now."""

    model: str  # model_identity
    settings: dict[str, Any]
    samples: int
    sampled: bool  # temperature > 0: the seeds decide the outputs

    @property
    def generation(self) -> str:
        return _digest(json.dumps(self.settings, sort_keys=True).encode())

    def record(self, item: EvalItem, first_seed: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "generation": self.generation,
            "item": item_digest(item),
            "seed": first_seed,
        }


def _well_formed(row: dict, samples: int) -> bool:
    if "unusable" in row:
        return isinstance(row["unusable"], str) and isinstance(row.get("problem"), str)
    return all(isinstance(row.get(key), list) and len(row[key]) == samples for key in _SAMPLE_LISTS)


def why_stale(row: dict | None, expected: dict[str, Any], producer: Producer) -> str | None:
    """None when the stored row is what the producer would write for this item now; else the first
    reason (a key of `REASONS`) why not."""
    if row is None:
        return "missing"
    record = row.get(RECORD)
    if not isinstance(record, dict):
        return "no_record"
    for key in ("model", "generation", "item"):
        if record.get(key) != expected[key]:
            return key
    if producer.sampled and record.get("seed") != expected["seed"]:
        return "seed"
    return None if _well_formed(row, producer.samples) else "malformed"


@dataclass
class Plan:
    """A benchmark's items split into rows reused as they are and items to generate, with why."""

    records: dict[str, dict[str, Any]]  # item id → the record its row must carry
    reused: list[str] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)  # item indices
    reasons: Counter = field(default_factory=Counter)
    damaged: list[str] = field(default_factory=list)  # "file:line: why"

    def message(self) -> str:
        if not self.todo:
            return f"reused {len(self.reused)}, nothing to generate"
        why = ", ".join(f"{self.reasons[key]} {label}" for key, label in REASONS.items() if self.reasons[key])
        return f"reused {len(self.reused)}, generating {len(self.todo)} ({why})"


def plan_rows(
    items: list[EvalItem], first_seeds: list[int], rows: dict[str, dict], producer: Producer
) -> Plan:
    plan = Plan({item.id: producer.record(item, seed) for item, seed in zip(items, first_seeds, strict=True)})
    for index, item in enumerate(items):
        reason = why_stale(rows.get(item.id), plan.records[item.id], producer)
        if reason is None:
            plan.reused.append(item.id)
        else:
            plan.todo.append(index)
            plan.reasons[reason] += 1
    return plan
