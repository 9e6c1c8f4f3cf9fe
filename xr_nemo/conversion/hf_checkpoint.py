"""Hugging Face safetensors checkpoints: read tensor by tensor from memory-mapped shards, written shard
by shard, and the tensor names and shapes a config implies (taken from Transformers' own model built on
the meta device, so they cannot drift from the reference)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig

from xr_nemo.errors import XrNemoError
from xr_nemo.models.family import OUTPUT_LAYER
from xr_nemo.models.registry import family_for_dir, family_of

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
#: Files that describe a checkpoint beside its weights, carried through import and export.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
)


class ConversionError(XrNemoError):
    """A checkpoint cannot be converted as it is."""


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    key: str  # as stored, in either key naming
    shape: tuple[int, ...]
    dtype: torch.dtype


SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
}


def expected_hf_shapes(config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Hub name → shape of every tensor a checkpoint with this config holds (no `lm_head` when tied)."""
    family = family_of(config)
    with torch.device("meta"):
        model = family.hf_model_class._from_config(config)
    shapes = {family.to_hub_name(name): tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop(family.hf_name(OUTPUT_LAYER))
    return shapes


class HFCheckpointReader:
    """Lazy access to the tensors of an HF checkpoint directory, by hub name, in either key naming (its
    model family, from its config.json, says how the two map)."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        self._to_hub_name = family_for_dir(self.dir).to_hub_name
        self.tensors = self._index()
        self._handle: tuple[Path, object] | None = None

    def read(self, hub_name: str) -> torch.Tensor:
        stored = self.tensors[hub_name]
        try:
            return self._open(stored.file).get_tensor(stored.key)
        except SafetensorError as error:
            raise self._corrupt(stored.file, error) from error

    def _open(self, file: Path):
        if self._handle is None or self._handle[0] != file:
            self._handle = (file, safe_open(str(file), framework="pt"))
        return self._handle[1]

    def _index(self) -> dict[str, StoredTensor]:
        tensors: dict[str, StoredTensor] = {}
        for file in self._weight_files():
            try:
                with safe_open(str(file), framework="pt") as handle:
                    stored_keys = handle.keys()
                    for key in stored_keys:
                        name = self._to_hub_name(key)
                        if name in tensors:
                            raise ConversionError(
                                f"tensor {name!r} is stored twice: {tensors[name].file.name}:"
                                f"{tensors[name].key} and {file.name}:{key}",
                                where=str(self.dir),
                                fix="keep one key naming per checkpoint",
                            )
                        info = handle.get_slice(key)
                        dtype = SAFETENSORS_DTYPES.get(info.get_dtype())
                        if dtype is None:
                            raise ConversionError(
                                f"tensor {key} has unsupported dtype {info.get_dtype()}",
                                where=str(file),
                                fix="store weights as bf16, fp16 or fp32",
                            )
                        tensors[name] = StoredTensor(file, key, tuple(info.get_shape()), dtype)
            except SafetensorError as error:
                raise self._corrupt(file, error) from error
        return tensors

    def _weight_files(self) -> list[Path]:
        index = self.dir / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConversionError(
                    f"cannot read the shard index: {error}",
                    where=str(index),
                    fix="restore the index file from the original checkpoint",
                ) from error
            files = [self.dir / name for name in dict.fromkeys(weight_map.values())]
            missing = [file.name for file in files if not file.exists()]
            if missing:
                raise ConversionError(
                    f"{len(missing)} shard(s) named in the index are missing: {', '.join(missing[:5])}",
                    where=str(index),
                    fix="download the complete checkpoint (every file the index lists)",
                )
            return files
        if (self.dir / SINGLE_FILE).exists():
            return [self.dir / SINGLE_FILE]
        files = sorted(self.dir.glob("*.safetensors"))
        if files:
            return files
        pickled = sorted(self.dir.glob("*.bin")) + sorted(self.dir.glob("*.pt"))
        raise ConversionError(
            f"no safetensors weights in {self.dir}"
            + (f" (found {pickled[0].name}: pickled weights are never loaded)" if pickled else ""),
            where=str(self.dir),
            fix="point at a Hugging Face checkpoint saved with safetensors (save_pretrained does by default)",
        )

    @staticmethod
    def _corrupt(file: Path, error: Exception) -> ConversionError:
        return ConversionError(
            f"cannot read safetensors shard: {error}",
            where=str(file),
            fix="the file is truncated or corrupt; download it again",
        )


class SafetensorsShardWriter:
    """Collects tensors into shards of at most `max_shard_bytes`, writing each shard when it is full,
    then names them `model-0000i-of-0000N.safetensors` and writes the index (one shard: model.safetensors)."""

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def finish(self) -> None:
        self._flush()
        if len(self._shards) == 1:
            self._shards[0][0].rename(self.out_dir / SINGLE_FILE)
            return
        weight_map = {}
        count = len(self._shards)
        for number, (path, names) in enumerate(self._shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.out_dir / f"shard-{len(self._shards):05d}.safetensors.partial"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0


def copy_side_files(source: Path, destination: Path) -> None:
    """Copy the config, tokenizer, processor and chat-template files that exist in `source`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)
