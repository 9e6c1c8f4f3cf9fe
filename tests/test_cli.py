import subprocess
import sys

import pytest

from xr_nemo.cli import main


def test_tiny_model_command_writes_a_checkpoint(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m"), "--tied"]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert str(tmp_path / "m") in capsys.readouterr().out


def test_user_error_exits_2_with_a_message_and_no_traceback(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("do not lose me")
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", "tiny-model", str(tmp_path / "busy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "do not lose me"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["init.checkpoint={tmp}/nowhere"], ["neither a checkpoint nor a run directory", "model.checkpoint"]),
        (["rollout.engnie=vllm"], ["rollout.engine"]),
        (["rollout.n=1", "init.checkpoint={tmp}/nowhere"], ["out of range", "rollout.n"]),
        (["parallel.cp=2", "rollout.engine=reference"], ["context parallelism", "rollout.engine"]),
        (["rollout.engine=hf"], ["cannot generate rollouts", "rollout.engine"]),
        (["run.dir={tmp}/file.txt"], ["is not a directory", "run.dir"]),
    ],
    ids=[
        "missing-sft-run",
        "typo",
        "group-of-one",
        "cp-reference-engine",
        "eval-only-engine",
        "run-dir-a-file",
    ],
)
def test_grpo_user_errors_say_what_and_where(tmp_path, overrides, expected):
    (tmp_path / "file.txt").write_text("not a run directory")
    args = [o.format(tmp=tmp_path) for o in overrides]
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", "grpo", f"run.dir={tmp_path / 'run'}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert all(text in result.stderr for text in expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    from xr_nemo.errors import XrNemoError

    with pytest.raises(XrNemoError):
        main(["--debug", "tiny-model", str(tmp_path / "busy")])


def test_a_saved_config_is_re_run_with_overrides_checked_before_launch(tmp_path):
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides, config_yaml

    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(apply_overrides(load_recipe("tiny_cpu", "sft"), [f"run.dir={tmp_path}"])))
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", "sft", "--config", str(saved), "trainer.max_steps=0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "trainer.max_steps=0 is out of range" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "checkpoints").exists()
