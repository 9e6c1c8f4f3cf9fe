"""The run directory: the one module that knows its layout, and resolves what a user may pass as a model.

```
<run.dir>/config.yaml           the resolved config of the first launch (never overwritten)
          config.N.yaml         a later launch's config, when its settings differ (see `record_config`)
          checkpoints/step_N/   megatron-core torch_dist checkpoints, each with the HF side files in hf/
          checkpoints/latest    the name of the newest complete checkpoint, replaced last
          checkpoints/step_N.damaged/   a damaged checkpoint a resume skipped, kept for inspection
          base_checkpoint/      the HF weights imported once, when training starts from HF weights
          hf/                   the Hugging Face export of the newest checkpoint (its xr_nemo.json names it)
          metrics.jsonl  tensorboard/  cache/  eval/
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from xr_nemo.config.overrides import config_yaml
from xr_nemo.conversion.convert import EXPORT_FORMAT, HF_FILES_DIR, INFO_FILE, export_hf
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.io.atomic_dir import write_text_atomically
from xr_nemo.io.manifest import MANIFEST_FILE

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BASE_CHECKPOINT = "base_checkpoint"
EXPORT_DIR = "hf"
CHECKPOINT_MARKER = "metadata.json"  # torch_dist writes it last
STEP_NAME = re.compile(r"step_(\d+)")
DAMAGED_SUFFIX = ".damaged"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step_{step}"


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's `checkpoints/step_N` directories, highest step first. Only complete checkpoints get
    that name (`step_N.tmp` is renamed when written); damaged ones set aside are `step_N.damaged`."""
    found = []
    for path in checkpoints_dir(run_dir).glob("step_*"):
        match = STEP_NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def latest_pointer(run_dir: str | Path) -> Path | None:
    """The checkpoint `checkpoints/latest` names (which may no longer exist), or None without a
    pointer. A pointer that names anything but a `step_N` of this run is refused."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    if not STEP_NAME.fullmatch(name):
        raise XrNemoError(
            f"{pointer} names {name!r}, which is not a checkpoint of this run (checkpoints/step_N)",
            where=str(pointer),
            fix="delete the pointer (the newest checkpoint is then found by scanning checkpoints/), or "
            "write the name of one of this run's checkpoints into it (e.g. step_4)",
        )
    return checkpoints_dir(run_dir) / name


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """Where a resume looks, in order: the checkpoint `latest` names, then the other `step_N`, highest
    step first (all of them when the pointer is missing, or names a checkpoint that is gone)."""
    steps = step_checkpoints(run_dir)
    named = latest_pointer(run_dir)
    if named in steps:
        steps.remove(named)
        steps.insert(0, named)
    return steps


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether a run has written a checkpoint: a `step_N` directory, or the `latest` pointer."""
    return bool(step_checkpoints(run_dir)) or (checkpoints_dir(run_dir) / LATEST).exists()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names; the highest `step_N` when the pointer is missing or names one
    that is gone; None before the first checkpoint."""
    candidates = checkpoint_candidates(run_dir)
    return candidates[0] if candidates else None


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint to `step_N.damaged` (`.damaged.2`, … when taken): resume, saving and
    pruning look at `step_N` only, so its files stay, for inspection, and are never overwritten."""
    target = checkpoint.with_name(checkpoint.name + DAMAGED_SUFFIX)
    number = 2
    while target.exists():
        target = checkpoint.with_name(f"{checkpoint.name}{DAMAGED_SUFFIX}.{number}")
        number += 1
    checkpoint.rename(target)
    return target


def point_latest_at(checkpoint: Path) -> None:
    write_text_atomically(checkpoint.parent / LATEST, checkpoint.name + "\n")


def is_checkpoint(path: Path) -> bool:
    """A checkpoint directory, whole or damaged: it has megatron-core's metadata.json or our manifest."""
    return (path / CHECKPOINT_MARKER).is_file() or (path / MANIFEST_FILE).is_file()


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


def export_source(hf_dir: Path) -> Path | None:
    """The checkpoint an export of ours was made from, as its `xr_nemo.json` records it; None for any
    other directory (a hub model, an export from before exports recorded their source)."""
    try:
        info = json.loads((Path(hf_dir) / INFO_FILE).read_text(encoding="utf-8"))
        return Path(info["source"]) if info.get("format") == EXPORT_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _stale_export(out: Path, newest: Path) -> str | None:
    """None when `out` is the export of the checkpoint `newest` as it is now; else why not. The export
    must name `newest` as its source (the path, or its step when the run directory was moved) and be
    written after it (`trainer.resume=restart` rewrites a step's checkpoint in place)."""
    if not has_hf_weights(out):
        return f"{out} does not exist yet"
    source = export_source(out)
    if source is None:
        return f"{out} does not record which checkpoint it was exported from"
    # the same path, or the same step of a run directory moved or copied since the export
    if source != newest.resolve() and source.parts[-2:] != newest.resolve().parts[-2:]:
        return f"{out} was exported from {source}, not from the newest checkpoint"
    written = [newest / CHECKPOINT_MARKER, newest]
    checkpoint_time = next(path for path in written if path.exists()).stat().st_mtime_ns
    if (out / INFO_FILE).stat().st_mtime_ns < checkpoint_time:
        return f"{out} is older than {newest.name}, which was written again since"
    return None


def resolve_hf_model(
    path: str | Path, where: str, say: Callable[[str], None], export: Callable[..., Path] = export_hf
) -> Path:
    """A Hugging Face model directory: as given; a checkpoint's export (made first when missing); or the
    export of a run directory's newest checkpoint in `<run>/hf` — made first when `hf/` is missing, was
    exported from another checkpoint, or does not say which. `say` names the checkpoint used."""
    given = Path(path)
    if has_hf_weights(given):
        return given
    out = given / EXPORT_DIR
    if is_checkpoint(given):
        if has_hf_weights(out):
            return out
        say(f"exporting {given} → {out}")
        return export(given, out, overwrite=True)
    newest = latest_checkpoint(given) if given.is_dir() else None
    if newest is None:
        if has_hf_weights(out):  # a run directory holding an export and no checkpoints
            return out
        raise ConfigError(
            f"{path} is neither a Hugging Face model directory, nor a run directory with checkpoints, "
            "nor a checkpoint",
            where=where,
            fix="pass a directory with config.json and *.safetensors, a training run directory or a "
            "checkpoints/step_N directory",
        )
    stale = _stale_export(out, newest)
    if stale is None:
        say(f"using {out}, the export of the newest checkpoint {newest}")
        return out
    say(f"{stale}: exporting the newest checkpoint {newest} → {out}")
    return export(newest, out, overwrite=True)


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
