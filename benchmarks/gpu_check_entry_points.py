"""The project's own entry points on the GPU: one `xr-nemo sft` step and one `xr-nemo grpo` step, each
`python -m xr_nemo.cli … --config FILE` in a process of its own (world size 1: NCCL on a GPU), on a
tiny synthetic Qwen2.5-VL (`model.synthetic=tiny`) in bf16, on the sample data in the source tree.

The configs are passed as files (`--config`), not as `--recipe`: recipes live in the top-level
`recipes/` folder, which only an install maps to `xr_nemo.recipes`; everything else imports from the
source tree with the repository on PYTHONPATH, so the portable run needs no `pip install -e`.

Passed when the command exits 0 and `metrics.jsonl` has step 1 with finite numbers: SFT's loss and
gradient norm, and for GRPO a non-zero gradient norm too (a real update: with completions of at most
48 tokens and a penalty on cut ones, some groups differ in reward even for a random model).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_check_env import REPO, installed

Outcome = tuple[bool, str, dict[str, Any]]
SAMPLES = REPO / "xr_nemo" / "data" / "samples"
# What torchrun and Slurm set: left out, so the step runs as a job of one process.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


def _common(run_dir: Path, dtype: str) -> dict[str, Any]:
    return {
        "run": {"dir": str(run_dir)},
        "model": {
            "hf_dir": str(run_dir.parent / f"{run_dir.name}_model"),
            "synthetic": "tiny",
            "dtype": dtype,
        },
        "checkpoint": {"every_steps": None, "at_end": True},
    }


def sft_config(run_dir: Path, dtype: str = "bfloat16") -> dict[str, Any]:
    """One SFT step on the bundled OpenThoughts sample: 2 packed rows of 1,024 tokens."""
    config = _common(run_dir, dtype)
    config["data"] = {"train": str(SAMPLES / "openthoughts_tiny.jsonl"), "max_length": 1024, "num_workers": 1}
    config["trainer"] = {
        "max_steps": 1,
        "seq_length": 1024,
        "micro_batch_size": 1,  # Transformer Engine takes one packed row per micro-batch
        "global_batch_size": 2,
        "progress": False,
    }
    return config


def grpo_config(run_dir: Path, engine: str, dtype: str = "bfloat16") -> dict[str, Any]:
    """One GRPO step: 4 prompts × 8 completions of at most 48 tokens, cut ones penalised."""
    config = _common(run_dir, dtype)
    config["data"] = {"train": str(SAMPLES / "arithmetic_prompts_tiny.jsonl"), "max_prompt_length": 256}
    config["rollout"] = {"engine": engine, "n": 8, "max_new_tokens": 48}
    if engine == "vllm":
        config["rollout"] |= {"kv_cache_gib": 2.0, "gpu_memory_utilization": 0.3}
    config["grpo"] = {"overlong_penalty": 1.0}
    config["reward"] = {"workers": 1}
    # micro-batches of 4 rows, as recipes/xreasoner_7b.py trains GRPO
    config["trainer"] = {"max_steps": 1, "prompts_per_step": 4, "micro_batch_size": 4, "progress": False}
    return config


def run_entry_point(stage: str, config: dict[str, Any], workdir: Path) -> tuple[int, float]:
    """`python -m xr_nemo.cli --debug STAGE --config FILE` (output into this process's log): its exit
    code and wall seconds. JSON is YAML, so the config file needs no YAML writer here."""
    run_dir = Path(config["run"]["dir"])
    for old in (run_dir, Path(config["model"]["hf_dir"])):  # a fresh run, not a resumed one
        shutil.rmtree(old, ignore_errors=True)
    path = workdir / f"{stage}_config.yaml"
    path.write_text(json.dumps(config, indent=2))
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "xr_nemo.cli", "--debug", stage, "--config", str(path)]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, env=env, cwd=workdir, stdin=subprocess.DEVNULL).returncode
    return code, time.perf_counter() - start


def _last_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[-1] if rows else None


def _finite(row: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(isinstance(row.get(key), int | float) and math.isfinite(row[key]) for key in keys)


def _judge(stage: str, code: int, seconds: float, row: dict | None, keys: tuple[str, ...]) -> Outcome:
    metrics = {"returncode": code, "wall_s": seconds, "last_metrics": row}
    if code != 0:
        return (
            False,
            f"`xr-nemo {stage}` exited with code {code} after {seconds:.0f} s (see the log)",
            metrics,
        )
    if row is None or row.get("step") != 1:
        return False, f"`xr-nemo {stage}` exited 0 but metrics.jsonl has no step 1: {row}", metrics
    if not _finite(row, keys):
        return False, f"step 1 has non-finite {', '.join(keys)}: {row}", metrics
    if stage == "grpo" and not row["grad_norm"] > 0:
        return (
            False,
            f"the GRPO step made no update (grad_norm 0, informative groups {row.get('informative_groups')})",
            metrics,
        )
    shown = ", ".join(f"{key} {row[key]:.4g}" for key in keys)
    return True, f"exit 0 in {seconds:.0f} s; step 1: {shown}", metrics


def check_sft_entry_point(args) -> Outcome:
    run_dir = Path(args.workdir) / "sft_cli"
    code, seconds = run_entry_point("sft", sft_config(run_dir, args.cli_dtype), Path(args.workdir))
    passed, summary, metrics = _judge("sft", code, seconds, _last_metrics(run_dir), ("loss", "grad_norm"))
    metrics["checkpoint_written"] = (run_dir / "checkpoints" / "step_1").is_dir()
    if passed and not metrics["checkpoint_written"]:
        return False, f"no checkpoint at {run_dir / 'checkpoints' / 'step_1'}", metrics
    return passed, summary, metrics


def check_grpo_entry_point(args) -> Outcome:
    engine = args.grpo_cli_engine
    if engine == "auto":
        engine = "vllm" if installed("vllm") and not args.portable and args.device == "cuda" else "reference"
    run_dir = Path(args.workdir) / "grpo_cli"
    code, seconds = run_entry_point("grpo", grpo_config(run_dir, engine, args.cli_dtype), Path(args.workdir))
    keys = ("loss", "grad_norm", "reward_mean", "logprob_mismatch")
    passed, summary, metrics = _judge("grpo", code, seconds, _last_metrics(run_dir), keys)
    metrics["engine"] = engine
    return passed, f"{engine} engine; {summary}", metrics
