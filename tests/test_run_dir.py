"""The run directory's one resolver of "HF directory, run directory or checkpoint", checkpoint pruning
that never removes the checkpoint `latest` names, and conversion's isolated process."""

from __future__ import annotations

import json
import os

import pytest

from xr_nemo.conversion.convert import EXPORT_FORMAT, INFO_FILE
from xr_nemo.distributed.isolated import run_isolated
from xr_nemo.errors import ConfigError
from xr_nemo.run_dir import (
    CHECKPOINT_MARKER,
    checkpoint_dir,
    latest_checkpoint,
    resolve_checkpoint,
    resolve_hf_model,
)
from xr_nemo.training.checkpoint import _prune


def _checkpoint(run, step):
    path = checkpoint_dir(run, step)
    path.mkdir(parents=True)
    (path / CHECKPOINT_MARKER).write_text("{}")
    (path.parent / "latest").write_text(path.name + "\n")
    return path


def _hf_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_checkpoints_resolve_from_a_run_or_as_given(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 2)
    newest = _checkpoint(run, 4)
    assert resolve_checkpoint(run, "model.checkpoint") == newest == latest_checkpoint(run)
    assert resolve_checkpoint(checkpoint_dir(run, 2), "x") == checkpoint_dir(run, 2)
    with pytest.raises(ConfigError, match="neither a checkpoint nor a run directory") as error:
        resolve_checkpoint(tmp_path / "nowhere", "trainer.resume")
    assert error.value.where == "trainer.resume"


def test_a_model_resolves_to_hf_weights_exporting_a_checkpoint_only_when_needed(tmp_path):
    exported = []

    def export(checkpoint, out, overwrite):
        exported.append((checkpoint, out))
        model = _hf_model(out)
        record = {"format": EXPORT_FORMAT, "source": str(checkpoint.resolve())}  # as export_hf records it
        (model / INFO_FILE).write_text(json.dumps(record))
        return model

    def resolve(path):
        return resolve_hf_model(path, "--model", say=lambda _: None, export=export)

    hf = _hf_model(tmp_path / "hf_model")
    assert resolve(hf) == hf
    run = tmp_path / "run"
    newest = _checkpoint(run, 3)
    assert resolve(run) == run / "hf" and exported == [(newest, run / "hf")]
    assert resolve(run) == run / "hf" and len(exported) == 1  # the export is reused
    other = tmp_path / "other"
    step = _checkpoint(other, 1)
    assert resolve(step) == step / "hf" and exported[-1] == (step, step / "hf")
    with pytest.raises(ConfigError, match="neither a Hugging Face model directory"):
        resolve(tmp_path / "empty")


def test_pruning_keeps_the_newest_checkpoint_even_when_older_steps_are_higher(tmp_path):
    """A run resumed from an earlier checkpoint writes step 3 while step 5 exists: keeping one must keep
    step 3, the one `latest` names."""
    run = tmp_path / "run"
    _checkpoint(run, 5)
    written = _checkpoint(run, 3)
    _prune(written.parent, keep_last=1, newest=written)
    assert written.is_dir() and latest_checkpoint(run) == written


def test_isolated_runs_forget_the_launcher_and_return_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert run_isolated(os.getenv, "RANK", "unset") == "unset"
    with pytest.raises(ConfigError, match="neither a checkpoint nor a run directory"):
        run_isolated(resolve_checkpoint, tmp_path / "nowhere", "model.checkpoint")


def test_a_metrics_line_cut_by_a_crash_is_dropped_on_resume(tmp_path):
    from xr_nemo.training.metrics import METRICS_FILE, MetricsWriter, read_metrics

    (tmp_path / METRICS_FILE).write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    )
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2]
    writer = MetricsWriter(tmp_path, resumed_step=2)
    writer.write(3, {"loss": 1.25})
    writer.close()
    assert read_metrics(tmp_path) == [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.5},
        {"step": 3, "loss": 1.25},
    ]
