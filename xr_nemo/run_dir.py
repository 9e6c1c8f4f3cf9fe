"""The run directory: the one module that knows its layout, and resolves what a user may pass as a model.

```
<run.dir>/config.yaml           the resolved config of the first launch (never overwritten)
          config.N.yaml         a later launch's config, when its settings differ (see `record_config`)
          checkpoints/step_N/   megatron-core torch_dist checkpoints, each with the HF side files in hf/
          checkpoints/latest    the name of the newest complete checkpoint, replaced last
          base_checkpoint/      the HF weights imported once, when training starts from HF weights
          hf/                   the Hugging Face export of the final checkpoint
          metrics.jsonl  tensorboard/  cache/  eval/
```
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from xr_nemo.config.overrides import config_yaml
from xr_nemo.conversion.convert import HF_FILES_DIR, export_hf
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.io.atomic_dir import write_text_atomically

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BASE_CHECKPOINT = "base_checkpoint"
EXPORT_DIR = "hf"
CHECKPOINT_MARKER = "metadata.json"  # torch_dist writes it last


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step_{step}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None before the first one."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.exists():
        return None
    target = checkpoints_dir(run_dir) / pointer.read_text().strip()
    if not target.is_dir():
        raise XrNemoError(
            f"{pointer} names {target.name}, which does not exist",
            where=str(pointer),
            fix="delete the pointer to start over, or restore the checkpoint",
        )
    return target


def is_checkpoint(path: Path) -> bool:
    return (path / CHECKPOINT_MARKER).is_file()


def side_files(checkpoint: Path) -> Path:
    """A checkpoint's HF side files (config.json, tokenizer, chat template)."""
    return checkpoint / HF_FILES_DIR


def resolve_checkpoint(path: str | Path, where: str) -> Path:
    """A checkpoint directory as given, or a run directory's latest checkpoint."""
    given = Path(path)
    chosen = (latest_checkpoint(given) if given.is_dir() else None) or given
    if not is_checkpoint(chosen):
        raise ConfigError(
            f"{given} is neither a checkpoint nor a run directory with checkpoints",
            where=where,
            fix="pass a run directory (its latest checkpoint is used) or a checkpoints/step_N directory",
        )
    return chosen


def has_hf_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def resolve_hf_model(
    path: str | Path, where: str, say: Callable[[str], None], export: Callable[..., Path] = export_hf
) -> Path:
    """A Hugging Face model directory: as given, a run directory's export, or — when a run or a
    checkpoint has none yet — its (latest) checkpoint exported to `<run>/hf` first."""
    given = Path(path)
    for candidate in (given, given / EXPORT_DIR):
        if has_hf_weights(candidate):
            return candidate
    if is_checkpoint(given):
        checkpoint, out = given, given / EXPORT_DIR
    else:
        checkpoint = latest_checkpoint(given) if given.is_dir() else None
        out = given / EXPORT_DIR
    if checkpoint is None:
        raise ConfigError(
            f"{path} is neither a Hugging Face model directory, nor a run directory with checkpoints, "
            "nor a checkpoint",
            where=where,
            fix="pass a directory with config.json and *.safetensors, a training run directory or a "
            "checkpoints/step_N directory",
        )
    say(f"exporting {checkpoint} → {out}")
    return export(checkpoint, out, overwrite=True)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _launch_number(path: Path) -> int:
    match = re.fullmatch(r"config\.(\d+)\.yaml", path.name)
    return int(match.group(1)) if match else 0


def record_config(config: Any, run_dir: Path, say: Callable[[str], None]) -> Path:
    """Keep the run's history of settings: `config.yaml` is the first launch's and is never rewritten; a
    later launch whose settings differ from the last recorded ones writes `config.N.yaml` beside it and
    says what changed. Returns the file that holds this launch's settings."""
    text = config_yaml(config)
    first = run_dir / CONFIG_FILE
    if not first.exists():
        write_text_atomically(first, text)
        return first
    recorded = max([first, *run_dir.glob("config.*.yaml")], key=_launch_number)
    before, now = _flat(yaml.safe_load(recorded.read_text())), _flat(yaml.safe_load(text))
    changed = {key for key in before.keys() | now.keys() if before.get(key) != now.get(key)}
    if not changed:
        return recorded
    path = run_dir / f"config.{_launch_number(recorded) + 1}.yaml"
    write_text_atomically(path, text)
    lines = [f"  {key}: {before.get(key)} → {now.get(key)}" for key in sorted(changed)]
    say(
        f"settings differ from {recorded.name} (kept); this launch's are in {path.name}:\n" + "\n".join(lines)
    )
    return path
