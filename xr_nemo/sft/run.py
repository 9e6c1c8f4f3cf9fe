"""`xr-nemo sft`: from a config to a trained (and optionally exported) checkpoint, on every rank."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.config.schema import SFTConfig
from xr_nemo.conversion.dist_checkpoint import load_model_weights
from xr_nemo.data.batches import BatchPlan
from xr_nemo.data.packing import collate
from xr_nemo.data.tokenize import TokenizedDataset, tokenize_dataset
from xr_nemo.distributed import context_parallel, initialize, shutdown
from xr_nemo.errors import ConfigError
from xr_nemo.models.qwen25_vl.rope_index import mrope_position_ids
from xr_nemo.sft.step import forward_step
from xr_nemo.training.loop import TrainingJob, resume_point, train
from xr_nemo.training.setup import (
    build_model,
    export_final,
    initial_checkpoint,
    on_rank_zero_first,
    prepare_run_dir,
    wrap_for_training,
)


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[sft] {message}", flush=True)


def _datasets(config: SFTConfig, hf_dir: Path) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    data = config.data
    cache = data.cache_dir or str(Path(config.run.dir) / "cache")
    progress = config.trainer.progress and dist.get_rank() == 0
    train_set = on_rank_zero_first(
        tokenize_dataset, data.train, data.split, str(hf_dir), data, cache, progress
    )
    _say(f"train data: {train_set.stats.summary()}")
    for example in train_set.stats.bad_examples:
        _say(f"  skipped {example}")
    validation = None
    if data.validation:
        validation = on_rank_zero_first(
            tokenize_dataset,
            data.validation,
            data.validation_split,
            str(hf_dir),
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
    multiple = config.model.sequence_multiple
    if config.model.pipeline_parallel > 1 and trainer.seq_length % multiple:
        raise ConfigError(
            f"trainer.seq_length {trainer.seq_length} is not a multiple of {multiple}: pipeline "
            "parallelism pads every sequence to it, and context and sequence parallelism split "
            "sequences into equal parts",
            where="trainer.seq_length",
            fix=f"set trainer.seq_length to a multiple of {multiple}",
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
    multiple = config.model.sequence_multiple

    def microbatches(step: int) -> list[dict[str, torch.Tensor]]:
        return [
            context_parallel.split_batch(
                collate(
                    [[dataset.sample(i) for i in sequence] for sequence in micro],
                    pad_id,
                    length=fixed,
                    position_ids=positions,
                    multiple_of=multiple,
                )
            )
            for micro in plan.microbatches(step, dp_rank, dp_size, config.trainer.micro_batch_size)
        ]

    return microbatches


def run_sft(config: SFTConfig) -> Path:
    """Train; return the directory of the last checkpoint. Collective: every rank calls it."""
    run_dir = Path(config.run.dir)
    initialize(config.model, seed=config.trainer.seed)
    try:
        hf_dir = prepare_run_dir(config)
        dp_size = parallel_state.get_data_parallel_world_size()
        _check_batch_layout(config, dp_size)
        train_set, validation = _datasets(config, hf_dir)
        hf_config = AutoConfig.from_pretrained(hf_dir)
        pad_id = AutoTokenizer.from_pretrained(hf_dir).pad_token_id or 0
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
                source="data.validation",
            )
            val_microbatches = _microbatch_source(config, validation, val_plan, pad_id, positions)
            val_steps = min(trainer.val_batches, val_plan.steps_per_epoch)
            validation_source = lambda: [val_microbatches(i) for i in range(val_steps)]  # noqa: E731

        torch.manual_seed(trainer.seed)
        model = build_model(hf_config, config.model)
        resume_from = resume_point(config)
        if resume_from is None:
            load_model_weights(model, initial_checkpoint(config.model, run_dir, _say))
        wrapped, optimizer = wrap_for_training(model, config.model, config.optim)
        job = TrainingJob(
            model=model,
            wrapped=wrapped,
            optimizer=optimizer,
            forward_step=forward_step,
            train_microbatches=_microbatch_source(config, train_set, plan, pad_id, positions),
            validation_microbatches=validation_source,
            steps_per_epoch=plan.steps_per_epoch,
            hf_dir=hf_dir,
            resume_from=resume_from,
        )
        return export_final(run_dir, train(config, job), config.export, _say)
    finally:
        shutdown()
