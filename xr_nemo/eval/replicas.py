"""Data-parallel evaluation: N engine replicas, each a process of its own with its own GPUs.

The parent writes the resolved config next to the predictions and starts
`python -m xr_nemo.eval.replica_worker CONFIG RANK N` N times; replica r generates items i with i mod N = r
into its own part file (see `xr_nemo.eval.predictions`) and exits. Replicas share no process group,
so a vLLM engine at any tensor-parallel size runs in each as it would alone. With GPUs, replica r sees
devices [r·TP, (r+1)·TP) of the parent's visible devices.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from xr_nemo.config.overrides import config_yaml
from xr_nemo.config.schema import EvalConfig
from xr_nemo.errors import ConfigError, XrNemoError


def _visible_devices() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [device.strip() for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def replica_environments(replicas: int, tensor_parallel: int) -> list[dict[str, str]]:
    devices = _visible_devices()
    environments = [dict(os.environ) for _ in range(replicas)]
    if devices:
        if len(devices) < replicas * tensor_parallel:
            raise ConfigError(
                f"data_parallel={replicas} × tensor_parallel={tensor_parallel} needs "
                f"{replicas * tensor_parallel} GPUs; {len(devices)} are visible",
                where="data_parallel / tensor_parallel",
                fix="lower one of them, or make more GPUs visible",
            )
        for rank, environment in enumerate(environments):
            own = devices[rank * tensor_parallel : (rank + 1) * tensor_parallel]
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(own)
    return environments


def run_replicas(config: EvalConfig, model_dir: Path, out_dir: Path) -> None:
    replicas = config.data_parallel
    environments = replica_environments(replicas, config.generation.tensor_parallel)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.replace(config, model=str(model_dir), out_dir=str(out_dir))
    config_path = out_dir / "replica_config.yaml"
    config_path.write_text(config_yaml(resolved), encoding="utf-8")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "xr_nemo.eval.replica_worker", str(config_path), str(rank), str(replicas)],
            env=environment,
        )
        for rank, environment in enumerate(environments)
    ]
    failed = [(rank, process.wait()) for rank, process in enumerate(processes)]
    failed = [(rank, code) for rank, code in failed if code != 0]
    if failed:
        raise XrNemoError(
            f"evaluation replicas failed: {', '.join(f'replica {r} (exit {c})' for r, c in failed)}",
            where="data_parallel",
            fix="see their messages above; rerun the same command to continue (finished items are kept)",
        )
