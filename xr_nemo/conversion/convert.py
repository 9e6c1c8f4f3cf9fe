"""HF ⇄ Megatron checkpoint conversion for every model family, one tensor at a time, through the
family's mapping table.

An imported checkpoint directory holds the torch_dist tensors (global shapes: loadable at any TP/PP),
the HF side files under `hf/` (config, tokenizer, processor, chat template) needed to go back, and
`xr_nemo.json` describing where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, PretrainedConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.conversion.dist_checkpoint import (
    DistCheckpointReader,
    check_files,
    checkpoint_layout,
    parameter_names,
    verified_while_reading,
    write_dist_checkpoint,
)
from xr_nemo.conversion.hf_checkpoint import (
    ConversionError,
    HFCheckpointReader,
    SafetensorsShardWriter,
    copy_side_files,
    expected_hf_shapes,
)
from xr_nemo.io.atomic_dir import atomic_output_dir
from xr_nemo.io.output_guard import OutputKind, check_output
from xr_nemo.models.family import OUTPUT_LAYER, WORD_EMBEDDINGS, ModelFamily
from xr_nemo.models.mapping import Mapping, find_mapping
from xr_nemo.models.registry import FAMILIES, family_of

HF_FILES_DIR = "hf"
INFO_FILE = "xr_nemo.json"
EXPORT_FORMAT = "xr-nemo/hf-export"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
KEY_NAMINGS = ("hub", "transformers")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def import_format(family: ModelFamily) -> str:
    return f"xr-nemo/{family.name}/torch_dist"


def load_hf_config(directory: Path, what: str) -> tuple[PretrainedConfig, ModelFamily]:
    """The config of `directory` and its model family (a ConfigError for an unsupported architecture)."""
    if not (directory / "config.json").is_file():
        raise ConversionError(f"no config.json in {directory}", where=str(directory), fix=f"pass {what}")
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except (ValueError, OSError) as error:
        raise ConversionError(
            f"cannot read the model config: {error}", where=str(directory / "config.json"), fix=f"pass {what}"
        ) from error
    return config, family_of(config, where=str(directory / "config.json"))


def _written_as(directory: Path, expected: set[str]) -> bool:
    """Whether `directory` carries our `xr_nemo.json` of a format in `expected`: an earlier output of
    that kind."""
    info = directory / INFO_FILE
    try:
        if not info.is_file() or info.stat().st_size > 1024**2:
            return False
        return json.loads(info.read_text(encoding="utf-8"))["format"] in expected
    except (OSError, ValueError, KeyError, TypeError):
        return False


# What each command writes, and so what its --overwrite may replace; the run-directory places are
# run_dir.BASE_CHECKPOINT and run_dir.EXPORT_DIR, which training writes.
IMPORT_FORMATS = {import_format(family) for family in FAMILIES}
IMPORTED = OutputKind(
    "convert import",
    f"{INFO_FILE} of format {' or '.join(sorted(IMPORT_FORMATS))}",
    "base_checkpoint",
    lambda directory: _written_as(directory, IMPORT_FORMATS),
)
EXPORTED = OutputKind(
    "convert export",
    f"{INFO_FILE} of format {EXPORT_FORMAT}",
    "hf",
    lambda directory: _written_as(directory, {EXPORT_FORMAT}),
)


def hf_sources(parameter_names: list[str], family: ModelFamily) -> dict[str, tuple[Mapping, tuple[str, ...]]]:
    """Parameter name → (mapping, HF tensor names it is made of)."""
    sources = {}
    for name in parameter_names:
        try:
            mapping, wildcard = find_mapping(name, family.mappings)
        except KeyError:
            raise ConversionError(
                f"model parameter {name} has no conversion mapping",
                where=f"the mapping table of model family {family.name}",
                fix="this is a bug: every parameter of the model needs a mapping; please report it",
            ) from None
        sources[name] = (mapping, mapping.resolve(wildcard)[1])
    return sources


def _check_tensors(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ConversionError(
            f"{len(missing)} tensor(s) the config requires are missing, e.g. {missing[:3]}",
            where=where,
            fix="the checkpoint is incomplete or does not match its config.json",
        )
    wrong = [(name, found[name], shape) for name, shape in expected.items() if tuple(found[name]) != shape]
    if wrong:
        name, got, want = wrong[0]
        more = f" ({len(wrong) - 1} more mismatches)" if len(wrong) > 1 else ""
        raise ConversionError(
            f"tensor {name} has shape {list(got)} but config.json implies {list(want)}{more}",
            where=where,
            fix="the weights and config.json come from different models; use the matching config.json",
        )


def import_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    parallel: ParallelConfig | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """HF checkpoint → megatron-core torch_dist checkpoint. `parallel` is checked against the model (the
    checkpoint itself loads at any layout); `dtype` defaults to the stored embedding's dtype."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    check_output(out_dir, [hf_dir], IMPORTED, overwrite, where="output directory (convert import OUT_DIR)")
    parallel = parallel or ParallelConfig()
    hf_config, family = load_hf_config(hf_dir, "a Hugging Face checkpoint directory of a supported model")
    megatron_config, _ = family.language_model_config(hf_config, parallel)
    layers = hf_config.text_config.num_hidden_layers
    if layers % parallel.pipeline_parallel:
        raise ConversionError(
            f"{layers} layers do not split into pipeline_parallel={parallel.pipeline_parallel} equal stages",
            where="--pp",
            fix="choose a pipeline-parallel size that divides text_config.num_hidden_layers",
        )
    reader = HFCheckpointReader(hf_dir)
    expected = expected_hf_shapes(hf_config)
    stored = {name: tensor.shape for name, tensor in reader.tensors.items()}
    _check_tensors(stored, expected, str(hf_dir))
    output_layer = family.hf_name(OUTPUT_LAYER)
    unexpected = sorted(set(stored) - set(expected) - {output_layer})
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} stored tensor(s) are not parameters of this config, e.g. {unexpected[:3]}",
            where=str(hf_dir),
            fix="the weights and config.json come from different models; use the matching config.json",
        )
    if hf_config.tie_word_embeddings and output_layer in stored:
        tqdm.write(
            f"note: tie_word_embeddings is set, so the stored {output_layer} is ignored (as Transformers "
            "does)"
        )
    dtype = dtype or reader.tensors[family.hf_name(WORD_EMBEDDINGS)].dtype

    with checkpoint_layout(hf_config, dtype) as layout, atomic_output_dir(out_dir, overwrite) as staging:
        sources = hf_sources(parameter_names(layout), family)
        bar = tqdm(total=len(sources), desc="import", unit="tensor", disable=not progress)

        def produce(name: str) -> torch.Tensor:
            mapping, hf_names = sources[name]
            tensor = mapping.to_megatron([reader.read(n) for n in hf_names], megatron_config)
            bar.update()
            return tensor.to(dtype)

        write_dist_checkpoint(staging, layout, produce)
        bar.close()
        copy_side_files(hf_dir, staging / HF_FILES_DIR)
        info = {
            "format": import_format(family),
            "source": str(hf_dir.resolve()),
            "dtype": str(dtype).removeprefix("torch."),
            "checked_layout": {
                "tensor_parallel": parallel.tensor_parallel,
                "pipeline_parallel": parallel.pipeline_parallel,
            },
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def export_hf(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    key_naming: str = "hub",
    dtype: torch.dtype | None = None,
    hf_files: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """megatron-core torch_dist checkpoint → HF directory (safetensors shards and index, config, tokenizer
    and processor files). `hf_files` defaults to the checkpoint's own `hf/` directory; `dtype` to the
    stored one."""
    if key_naming not in KEY_NAMINGS:
        raise ConversionError(
            f"unknown key naming {key_naming!r}", where="--key-naming", fix=f"use {KEY_NAMINGS}"
        )
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    check_files(checkpoint_dir)  # a half-written checkpoint is refused at once; its bytes as they are read
    side = Path(hf_files) if hf_files else checkpoint_dir / HF_FILES_DIR
    # the checkpoint's own hf/ may take the export: it keeps the side files, the weights join them
    own = [checkpoint_dir / HF_FILES_DIR] if side == checkpoint_dir / HF_FILES_DIR else []
    inputs = [checkpoint_dir] if own else [checkpoint_dir, side]
    where = "output directory (convert export OUT_DIR)"
    check_output(out_dir, inputs, EXPORTED, overwrite, where=where, own_places=own)
    hf_config, family = load_hf_config(
        side, "--hf-files DIR holding the model's config.json and tokenizer files"
    )
    megatron_config, _ = family.language_model_config(hf_config)
    expected = expected_hf_shapes(hf_config)
    rename = family.to_transformers_name if key_naming == "transformers" else str

    with checkpoint_layout(hf_config, torch.float32) as layout:
        reader = DistCheckpointReader(checkpoint_dir, layout)
        sources = hf_sources(reader.names(), family)
        produced = {hf_name for _, hf_names in sources.values() for hf_name in hf_names}
        _check_tensors(
            {name: expected[name] for name in produced & set(expected)}, expected, str(checkpoint_dir)
        )
        with atomic_output_dir(out_dir, overwrite) as staging, verified_while_reading(checkpoint_dir):
            writer = SafetensorsShardWriter(staging, max_shard_bytes)
            for name in tqdm(reader.names(), desc="export", unit="tensor", disable=not progress):
                mapping, hf_names = sources[name]
                for hf_name, tensor in zip(
                    hf_names, mapping.to_hf(reader.read(name), megatron_config), strict=True
                ):
                    writer.add(rename(hf_name), tensor if dtype is None else tensor.to(dtype))
            writer.finish()
            copy_side_files(side, staging)
            if dtype is not None:
                _record_dtype(staging / "config.json", dtype)
            info = {
                "format": EXPORT_FORMAT,
                "source": str(checkpoint_dir.resolve()),
                "key_naming": key_naming,
            }
            (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _record_dtype(config_file: Path, dtype: torch.dtype) -> None:
    config = json.loads(config_file.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
