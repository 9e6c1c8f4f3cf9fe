"""What every training stage does before its loop: model directory, initial weights, the model wrapped
in megatron-core DDP with its optimizer, and rank-0-first file work."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer
from transformers import Qwen2_5_VLConfig

from xr_nemo.config.overrides import save_config
from xr_nemo.config.schema import ExportConfig, GRPOConfig, ModelConfig, OptimConfig, SFTConfig
from xr_nemo.conversion.convert import HF_FILES_DIR
from xr_nemo.distributed.launch_env import LAUNCHER_VARIABLES
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.models.qwen25_vl.model import Qwen25VLModel
from xr_nemo.training.checkpoint import checkpoints_dir, latest_checkpoint
from xr_nemo.training.optimizer import build_optimizer

BASE_CHECKPOINT = "base_checkpoint"
T = TypeVar("T")


def on_rank_zero_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """Rank 0 does the work (building caches, files); the others then reuse what it wrote."""
    result = fn(*args, **kwargs) if dist.get_rank() == 0 else None
    dist.barrier()
    return result if dist.get_rank() == 0 else fn(*args, **kwargs)


def run_xr_nemo(*args: str) -> None:
    """Run an `xr-nemo` command in a fresh single process (conversion sets up its own parallel state)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        error = result.stderr[result.stderr.find("xr-nemo: error") :] or result.stderr[-4000:]
        raise XrNemoError(f"`xr-nemo {' '.join(args)}` failed:\n{error.strip()}")


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory as given, or a run directory's latest checkpoint."""
    given = Path(path)
    latest = latest_checkpoint(given) if given.is_dir() else None
    chosen = latest or given
    if not (chosen / "metadata.json").exists():
        raise ConfigError(
            f"{given} is neither a checkpoint nor a run directory with checkpoints",
            where="model.checkpoint",
            fix="pass a run directory (its latest checkpoint is used) or a checkpoints/step_N directory",
        )
    return chosen


def model_dir(model: ModelConfig) -> Path:
    """The Hugging Face directory with config.json and tokenizer: `model.hf_dir`, or the checkpoint's."""
    if model.hf_dir:
        return Path(model.hf_dir)
    if not model.checkpoint:
        raise ConfigError(
            "no model given",
            where="model.hf_dir",
            fix="set model.hf_dir, or model.checkpoint / init.checkpoint",
        )
    return resolve_checkpoint(model.checkpoint) / HF_FILES_DIR


def prepare_model_dir(model: ModelConfig) -> None:
    """Rank 0: build the synthetic model when asked and absent; check the directory otherwise."""
    hf_dir = model_dir(model)
    if (hf_dir / "config.json").exists():
        return
    if model.synthetic == "tiny":
        from xr_nemo.testing.qwen25_vl import TinyQwen25VLSpec, build_tiny_qwen25_vl

        build_tiny_qwen25_vl(hf_dir, TinyQwen25VLSpec(num_kv_heads=2))  # splits over 2 TP ranks
        return
    raise ConfigError(
        f"{hf_dir} has no config.json",
        where="model.hf_dir",
        fix="point it at a Hugging Face Qwen2.5-VL directory",
    )


def prepare_run_dir(config: SFTConfig | GRPOConfig) -> Path:
    """Rank 0 creates the run directory, saves the resolved config and prepares the model directory;
    returns the model directory, once every rank may read it. Collective."""
    run_dir = Path(config.run.dir)
    if dist.get_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        prepare_model_dir(config.model)
    dist.barrier()
    return model_dir(config.model)


def export_final(run_dir: Path, last_step: int, export: ExportConfig, say: Callable[[str], None]) -> Path:
    """The last checkpoint's directory, exported to `<run_dir>/hf` by rank 0 when `export.hf`. Collective."""
    final = checkpoints_dir(run_dir) / f"step_{last_step}"
    if export.hf and dist.get_rank() == 0:
        args = ["convert", "export", str(final), str(run_dir / "hf"), "--overwrite"]
        run_xr_nemo(*args, *(["--dtype", export.dtype] if export.dtype else []))
        say(f"exported {final} → {run_dir / 'hf'}")
    dist.barrier()
    say(f"done: {final}")
    return final


def initial_checkpoint(model: ModelConfig, run_dir: Path, say: Callable[[str], None]) -> Path:
    """`model.checkpoint`, or the HF weights imported into the run directory once. Collective."""
    if model.checkpoint:
        return resolve_checkpoint(model.checkpoint)
    base = run_dir / BASE_CHECKPOINT
    if dist.get_rank() == 0 and not (base / "metadata.json").exists():
        say(f"importing {model.hf_dir} → {base}")
        run_xr_nemo("convert", "import", str(model.hf_dir), str(base), "--overwrite")
    dist.barrier()
    return base


def params_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in ("bfloat16", "float32"):
        raise ConfigError(
            f"unsupported model.dtype {name!r}", where="model.dtype", fix="auto, bfloat16 or float32"
        )
    return getattr(torch, name)


def build_model(hf_config: Qwen2_5_VLConfig, model: ModelConfig) -> Qwen25VLModel:
    return Qwen25VLModel(
        hf_config, model, params_dtype=params_dtype(model.dtype), train_vision=model.train_vision
    )


def wrap_for_training(
    model: Qwen25VLModel, model_config: ModelConfig, optim: OptimConfig
) -> tuple[DistributedDataParallel, MegatronOptimizer]:
    """DDP and the optimizer. Losses are (sum, token count) pairs: megatron-core then divides gradients by
    the tokens of the whole global batch, and DDP must sum (not average) over data-parallel ranks — it
    reads `calculate_per_token_loss` when it is built, so the flag is set before."""
    model.config.calculate_per_token_loss = True
    model.config.finalize_model_grads_func = finalize_model_grads
    wrapped = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=model_config.use_distributed_optimizer
        ),
        module=model,
    )
    bf16 = params_dtype(model_config.dtype) == torch.bfloat16
    optimizer = build_optimizer([wrapped], optim, model_config.use_distributed_optimizer, bf16=bf16)
    return wrapped, optimizer
