"""Fault tolerance under nvidia-resiliency-ext's `ft_launcher`, on 2 CPU ranks (gloo), through the CLI:
a rank that raises mid-run, or one that hangs (stops sending heartbeats and blocks its peer in a
collective), is detected; the launcher restarts both ranks, which resume from the latest checkpoint and
finish with the uninterrupted run's losses, step for step. A drill outside the launcher is refused or
fails loudly."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import processes

pytestmark = pytest.mark.slow

FT_LAUNCHER = Path(sys.executable).parent / "ft_launcher"
KEYS = ("loss", "grad_norm", "lr", "consumed_samples")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    root = tmp_path_factory.mktemp("ft")
    hf_dir = build_tiny_qwen25_vl(root / "hf", TinyQwen25VLSpec(num_kv_heads=2))
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    return root, [
        f"model.hf_dir={hf_dir}",
        f"model.checkpoint={checkpoint}",
        f"data.cache_dir={root / 'cache'}",
        "trainer.progress=false",
        "data.max_samples=24",
        "trainer.max_steps=6",
        "checkpoint.every_steps=2",
    ]


def _under_ft_launcher(stage: str, args: list[str], launcher_args=()) -> subprocess.CompletedProcess:
    command = [
        str(FT_LAUNCHER),
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=1",
        "--monitor-interval=1",
        "--ft-workload-check-interval=1",
        "--ignore-missing-fault-tol-cfg",
        *launcher_args,
        "-m",
        "xr_nemo.cli",
        stage,
        *args,
    ]
    result = processes.run(command)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _sft_under_ft_launcher(base, name: str, *overrides: str, launcher_args=()) -> subprocess.CompletedProcess:
    root, common = base
    return _under_ft_launcher("sft", [*common, f"run.dir={root / name}", *overrides], launcher_args)


def _rows(base, name: str) -> list[list[float]]:
    from xr_nemo.training.metrics import read_metrics

    return [[row[k] for k in KEYS] for row in read_metrics(base[0] / name)]


@pytest.fixture(scope="module")
def uninterrupted(base):
    result = _sft_under_ft_launcher(base, "whole")
    assert "drill" not in result.stderr and "resumed from" not in result.stdout
    rows = _rows(base, "whole")
    assert len(rows) == 6
    return rows


def test_an_exception_on_one_rank_is_recovered_with_the_uninterrupted_losses(base, uninterrupted):
    from xr_nemo.run_dir import latest_checkpoint
    from xr_nemo.training.checkpoint import read_train_state

    result = _sft_under_ft_launcher(
        base,
        "exception",
        "fault_tolerance.inject_fault=exception",
        "fault_tolerance.inject_at_step=3",
        "fault_tolerance.inject_on_rank=1",
        "fault_tolerance.learn_timeout_after=2",
        launcher_args=["--ft-safety-factor=50"],
    )
    assert "drill: exception on rank 1 at step 3" in result.stderr
    assert "InjectedFault" in result.stderr
    assert "resumed from" in result.stdout and "step_2 at step 2" in result.stdout
    assert _rows(base, "exception") == uninterrupted
    # the heartbeat timeout learned from the step times went into the checkpoints and survived the restart
    timeouts = read_train_state(latest_checkpoint(base[0] / "exception"))["heartbeat_timeouts"]
    learned = timeouts["current_timeouts"]["heartbeat"]
    assert learned["were_calculated"] and 0 < learned["subsequent"] < 45 * 60


def test_a_hung_rank_is_detected_by_its_heartbeats_and_recovered(base, uninterrupted):
    result = _sft_under_ft_launcher(
        base,
        "hang",
        "fault_tolerance.inject_fault=hang",
        "fault_tolerance.inject_at_step=5",
        "fault_tolerance.inject_on_rank=1",
        "fault_tolerance.learn_timeout_after=null",
        launcher_args=["--ft-rank-heartbeat-timeout=15"],
    )
    assert "drill: hang on rank 1 at step 5" in result.stderr
    assert "step_4 at step 4" in result.stdout
    assert _rows(base, "hang") == uninterrupted


def test_drills_outside_the_launcher(base):
    root, common = base
    cli = [sys.executable, "-m", "xr_nemo.cli", "sft", *common, "fault_tolerance.inject_on_rank=0"]
    hang = subprocess.run(
        [*cli, f"run.dir={root / 'plain-hang'}", "fault_tolerance.inject_fault=hang"],
        capture_output=True,
        text=True,
    )
    assert hang.returncode == 2 and "needs a rank monitor" in hang.stderr
    crash = subprocess.run(
        [*cli, f"run.dir={root / 'plain-exception'}", "fault_tolerance.inject_fault=exception"],
        capture_output=True,
        text=True,
    )
    assert crash.returncode != 0 and "fault drill: exception on rank 0 at step 1" in crash.stderr


def test_grpo_recovers_from_an_exception_with_the_uninterrupted_rollouts_and_updates(base):
    """GRPO sends the same heartbeats; after a restart the prompt cursor and per-completion seeds in the
    checkpoint make the rollouts and updates those of the uninterrupted run."""
    root, common = base
    model = next(item for item in common if item.startswith("model.checkpoint="))
    grpo = [
        "--recipe",
        "tiny_cpu",
        model,
        "rollout.engine=reference",
        "rollout.n=4",
        "rollout.max_new_tokens=16",
        "trainer.prompts_per_step=4",
        "trainer.max_steps=4",
        "checkpoint.every_steps=2",
        "trainer.progress=false",
    ]

    def launch(name: str, *overrides: str) -> subprocess.CompletedProcess:
        return _under_ft_launcher("grpo", [*grpo, f"run.dir={root / name}", *overrides])

    from xr_nemo.training.metrics import read_metrics

    launch("grpo-whole")
    result = launch(
        "grpo-exception",
        "fault_tolerance.inject_fault=exception",
        "fault_tolerance.inject_at_step=3",
        "fault_tolerance.inject_on_rank=1",
    )
    assert "drill: exception on rank 1 at step 3" in result.stderr
    assert "step_2 at step 2" in result.stdout
    keys = ("reward_mean", "response_length", "prompt_cursor", "loss", "grad_norm")
    rows = {
        name: [[row[k] for k in keys] for row in read_metrics(root / name)]
        for name in ("grpo-whole", "grpo-exception")
    }
    assert len(rows["grpo-whole"]) == 4 and rows["grpo-exception"] == rows["grpo-whole"]
