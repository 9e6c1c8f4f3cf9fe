"""`xr-nemo sft`: from a config to a trained (and optionally exported) checkpoint, on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.config.overrides import save_config
from xr_nemo.config.schema import SFTConfig
from xr_nemo.conversion.dist_checkpoint import load_model_weights
from xr_nemo.data.batches import BatchPlan
from xr_nemo.data.packing import collate
from xr_nemo.data.tokenize import TokenizedDataset, tokenize_dataset
from xr_nemo.distributed import initialize, shutdown
from xr_nemo.distributed.launch_env import LAUNCHER_VARIABLES
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.models.qwen25_vl.model import Qwen25VLModel
from xr_nemo.models.qwen25_vl.rope_index import mrope_position_ids
from xr_nemo.sft.step import forward_step
from xr_nemo.training.checkpoint import checkpoints_dir
from xr_nemo.training.loop import TrainingJob, resume_point, train
from xr_nemo.training.optimizer import build_optimizer

BASE_CHECKPOINT = "base_checkpoint"


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[sft] {message}", flush=True)


def _on_rank_zero_first(fn, *args, **kwargs):
    """Rank 0 does the work (building caches, files); the others then reuse what it wrote."""
    result = fn(*args, **kwargs) if dist.get_rank() == 0 else None
    dist.barrier()
    return result if dist.get_rank() == 0 else fn(*args, **kwargs)


def _xr_nemo(*args: str) -> None:
    """Run an `xr-nemo` command in a fresh single process (conversion sets up its own parallel state)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        error = result.stderr[result.stderr.find("xr-nemo: error") :] or result.stderr[-4000:]
        raise XrNemoError(f"`xr-nemo {' '.join(args)}` failed:\n{error.strip()}")


def _prepare_model_dir(config: SFTConfig) -> None:
    hf_dir = Path(config.model.hf_dir)
    if (hf_dir / "config.json").exists():
        return
    if config.model.synthetic == "tiny":
        from xr_nemo.testing.qwen25_vl import TinyQwen25VLSpec, build_tiny_qwen25_vl

        build_tiny_qwen25_vl(hf_dir, TinyQwen25VLSpec(num_kv_heads=2))  # splits over 2 TP ranks
        return
    raise ConfigError(
        f"{hf_dir} has no config.json",
        where="model.hf_dir",
        fix="point it at a Hugging Face Qwen2.5-VL directory",
    )


def _initial_checkpoint(config: SFTConfig) -> Path:
    if config.model.checkpoint:
        return Path(config.model.checkpoint)
    base = Path(config.run.dir) / BASE_CHECKPOINT
    if dist.get_rank() == 0 and not (base / "metadata.json").exists():
        _say(f"importing {config.model.hf_dir} → {base}")
        _xr_nemo("convert", "import", config.model.hf_dir, str(base), "--overwrite")
    dist.barrier()
    return base


def _datasets(config: SFTConfig) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    data = config.data
    cache = data.cache_dir or str(Path(config.run.dir) / "cache")
    progress = config.trainer.progress and dist.get_rank() == 0
    train_set = _on_rank_zero_first(
        tokenize_dataset, data.train, data.split, config.model.hf_dir, data, cache, progress
    )
    _say(f"train data: {train_set.stats.summary()}")
    for example in train_set.stats.bad_examples:
        _say(f"  skipped {example}")
    validation = None
    if data.validation:
        validation = _on_rank_zero_first(
            tokenize_dataset,
            data.validation,
            data.validation_split,
            config.model.hf_dir,
            data,
            cache,
            progress,
        )
        _say(f"validation data: {validation.stats.summary()}")
    return train_set, validation


def _check_batch_layout(config: SFTConfig, dp_size: int) -> None:
    trainer = config.trainer
    if trainer.global_batch_size % (trainer.micro_batch_size * dp_size):
        raise ConfigError(
            f"global batch {trainer.global_batch_size} is not a multiple of micro batch × data parallel = "
            f"{trainer.micro_batch_size} × {dp_size}",
            where="trainer.global_batch_size",
            fix=f"use a multiple of {trainer.micro_batch_size * dp_size}",
        )
    if config.data.max_length - 1 > trainer.seq_length:
        raise ConfigError(
            f"data.max_length {config.data.max_length} does not fit trainer.seq_length {trainer.seq_length}",
            where="data.max_length",
            fix="set data.max_length ≤ trainer.seq_length + 1",
        )


def _microbatch_source(config: SFTConfig, dataset: TokenizedDataset, plan: BatchPlan, pad_id: int, positions):
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    fixed = config.trainer.seq_length if config.model.pipeline_parallel > 1 else None
    multiple = config.model.tensor_parallel if config.model.sequence_parallel else 1

    def microbatches(step: int) -> list[dict[str, torch.Tensor]]:
        return [
            collate(
                [[dataset.sample(i) for i in sequence] for sequence in micro],
                pad_id,
                length=fixed,
                position_ids=positions,
                multiple_of=multiple,
            )
            for micro in plan.microbatches(step, dp_rank, dp_size, config.trainer.micro_batch_size)
        ]

    return microbatches


def params_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in ("bfloat16", "float32"):
        raise ConfigError(
            f"unsupported model.dtype {name!r}", where="model.dtype", fix="auto, bfloat16 or float32"
        )
    return getattr(torch, name)


def run_sft(config: SFTConfig) -> Path:
    """Train; return the directory of the last checkpoint. Collective: every rank calls it."""
    run_dir = Path(config.run.dir)
    initialize(config.model, seed=config.trainer.seed)
    try:
        if dist.get_rank() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / "config.yaml")
            _prepare_model_dir(config)
        dist.barrier()
        dp_size = parallel_state.get_data_parallel_world_size()
        _check_batch_layout(config, dp_size)
        train_set, validation = _datasets(config)
        hf_config = AutoConfig.from_pretrained(config.model.hf_dir)
        pad_id = AutoTokenizer.from_pretrained(config.model.hf_dir).pad_token_id or 0
        positions = partial(
            mrope_position_ids,
            image_token_id=hf_config.image_token_id,
            spatial_merge_size=hf_config.vision_config.spatial_merge_size,
        )
        trainer = config.trainer
        plan = BatchPlan.build(
            train_set.lengths,
            config.data.packing,
            trainer.seq_length,
            trainer.global_batch_size,
            trainer.seed,
        )
        _say(
            f"{len(train_set)} samples → {len(plan.sequences)} sequences of ≤ {trainer.seq_length} tokens; "
            f"{plan.steps_per_epoch} steps per epoch × {trainer.epochs} epochs"
        )
        validation_source = None
        if validation is not None:
            val_plan = BatchPlan.build(
                validation.lengths,
                config.data.packing,
                trainer.seq_length,
                trainer.global_batch_size,
                trainer.seed,
            )
            val_microbatches = _microbatch_source(config, validation, val_plan, pad_id, positions)
            val_steps = min(trainer.val_batches, val_plan.steps_per_epoch)
            validation_source = lambda: [val_microbatches(i) for i in range(val_steps)]  # noqa: E731

        torch.manual_seed(trainer.seed)
        dtype = params_dtype(config.model.dtype)
        model = Qwen25VLModel(
            hf_config, config.model, params_dtype=dtype, train_vision=config.model.train_vision
        )
        resume_from = resume_point(config)
        if resume_from is None:
            load_model_weights(model, _initial_checkpoint(config))
        wrapped = DistributedDataParallel(
            model.config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True, use_distributed_optimizer=config.model.use_distributed_optimizer
            ),
            module=model,
        )
        optimizer = build_optimizer(
            [wrapped], config.optim, config.model.use_distributed_optimizer, bf16=dtype == torch.bfloat16
        )
        job = TrainingJob(
            model=model,
            wrapped=wrapped,
            optimizer=optimizer,
            forward_step=forward_step,
            train_microbatches=_microbatch_source(config, train_set, plan, pad_id, positions),
            validation_microbatches=validation_source,
            steps_per_epoch=plan.steps_per_epoch,
            hf_dir=Path(config.model.hf_dir),
            resume_from=resume_from,
        )
        last_step = train(config, job)
        final = checkpoints_dir(run_dir) / f"step_{last_step}"
        if config.export.hf and dist.get_rank() == 0:
            args = ["convert", "export", str(final), str(run_dir / "hf"), "--overwrite"]
            _xr_nemo(*args, *(["--dtype", config.export.dtype] if config.export.dtype else []))
            _say(f"exported {final} → {run_dir / 'hf'}")
        dist.barrier()
        _say(f"done: {final}")
        return final
    finally:
        shutdown()
