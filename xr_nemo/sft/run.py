"""`xr-nemo sft`: from a config to a trained (and optionally exported) checkpoint, on every rank. The
stage supplies the training loop (`xr_nemo.training.loop`) with one update per step over packed
micro-batches, drawn by the batch plan as a function of the step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.config.bounds import check_writable_directory, validate
from xr_nemo.config.schema import SFTConfig
from xr_nemo.data.batches import BatchPlan, build_plan
from xr_nemo.data.packing import collate
from xr_nemo.data.tokenize import TokenizedDataset, tokenize_dataset
from xr_nemo.distributed import context_parallel, initialize, shutdown
from xr_nemo.distributed.devices import all_reduce_host
from xr_nemo.distributed.launch_env import read_launch_env
from xr_nemo.errors import ConfigError
from xr_nemo.io.run_lock import release_run_dir
from xr_nemo.models.registry import family_of
from xr_nemo.sft.step import forward_step
from xr_nemo.training.loop import (
    Batch,
    Policy,
    Reports,
    StepHooks,
    StepPlan,
    Update,
    run_schedule,
    say,
    summed_report,
    train,
)
from xr_nemo.training.setup import build_policy, export_final, on_rank_zero_first, prepare_run_dir

Microbatches = Callable[[int], list[Batch]]  # step → this rank's micro-batches


def _check_batch_layout(config: SFTConfig, dp_size: int) -> None:
    """Sequence-sized steps split evenly; sample-sized ones are made up with empty sequences."""
    trainer = config.trainer
    if trainer.global_batch_size and trainer.global_batch_size % (trainer.micro_batch_size * dp_size):
        raise ConfigError(
            f"global batch {trainer.global_batch_size} is not a multiple of micro batch × data parallel = "
            f"{trainer.micro_batch_size} × {dp_size}",
            where="trainer.global_batch_size",
            fix=f"use a multiple of {trainer.micro_batch_size * dp_size}",
        )


def check_config(config: SFTConfig) -> None:
    """What the config's own checks (`validate`, run when it was made) cannot see: the file system and
    the world size. `validate` runs again for a config built in Python rather than by overrides."""
    validate(config)
    check_writable_directory(config.run.dir, "run.dir")
    _check_batch_layout(config, config.parallel.data_parallel_size(read_launch_env().world_size))


def _datasets(config: SFTConfig, hf_dir: Path) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    data = config.data
    cache = data.cache_dir or str(Path(config.run.dir) / "cache")
    progress = config.trainer.progress and dist.get_rank() == 0

    def tokenized(source: str, split: str, what: str) -> TokenizedDataset:
        dataset = on_rank_zero_first(tokenize_dataset, source, split, str(hf_dir), data, cache, progress)
        say("sft", f"{what} data: {dataset.stats.summary()}")
        for example in dataset.stats.bad_examples:
            say("sft", f"  skipped {example}")
        return dataset

    train_set = tokenized(data.train, data.split, "train")
    validation = tokenized(data.validation, data.validation_split, "validation") if data.validation else None
    return train_set, validation


def _plan(config: SFTConfig, dataset: TokenizedDataset, source: str) -> BatchPlan:
    trainer = config.trainer
    return build_plan(
        dataset.lengths,
        config.data.packing,
        trainer.seq_length,
        trainer.seed,
        global_batch_size=trainer.global_batch_size,
        global_batch_samples=trainer.global_batch_samples,
        source=source,
    )


def _microbatch_source(
    config: SFTConfig, dataset: TokenizedDataset, plan: BatchPlan, pad_id: int, positions
) -> Microbatches:
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    fixed = config.trainer.seq_length if config.parallel.pipeline_parallel > 1 else None
    multiple = config.sequence_multiple

    def microbatches(step: int) -> list[Batch]:
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


def _token_counts(microbatches: list[Batch]) -> torch.Tensor:
    """[samples, real tokens, computed tokens] over the data-parallel group. The counts are those of
    whole sequences: context-parallel ranks share the samples, each computing a slice."""
    cp_size = parallel_state.get_context_parallel_world_size()
    counts = torch.tensor(
        [[int(b["num_samples"]), int(b["real_tokens"]), b["tokens"].numel() * cp_size] for b in microbatches],
        dtype=torch.float64,
    ).sum(0)
    return all_reduce_host(counts, parallel_state.get_data_parallel_group())


class SFTStage:
    """One update per step over a global batch of packed sequences. The batch plan is a function of the
    step, so its data position is too (`BatchPlan.position`); the stage counts the samples trained on."""

    name = "sft"
    summed_reports: ClassVar[Mapping[str, int]] = {"loss": 2}  # sum, tokens (`sft.step.loss_func`)

    def __init__(
        self,
        config: SFTConfig,
        policy: Policy,
        plan: BatchPlan,
        train_microbatches: Microbatches,
        validation_microbatches: Callable[[], list[list[Batch]]] | None,
    ) -> None:
        self.config, self.policy, self.plan = config, policy, plan
        self.train_microbatches, self.validation_microbatches = train_microbatches, validation_microbatches
        self.epoch_size = plan.epoch_size
        self.planned_steps_per_epoch = plan.steps_per_epoch  # exact: every epoch has this many steps
        self.consumed = 0

    def _validation_loss(self) -> float:
        wrapped = self.policy.wrapped
        wrapped.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for microbatches in self.validation_microbatches():
                outputs = run_schedule(forward_step, wrapped, microbatches, forward_only=True)
                totals += summed_report(outputs, "loss", self.summed_reports["loss"])
        wrapped.train()
        return (totals[0] / totals[1].clamp(min=1)).item()

    def prepare(self, step: int, hooks: StepHooks) -> StepPlan:
        consumed = self.plan.position(step + 1) - self.plan.position(step)
        return StepPlan([Update(forward_step, self.train_microbatches(step))], consumed)

    def metrics(self, step: int, plan: StepPlan, reports: Reports) -> dict[str, float]:
        """Also the validation loss, every `trainer.val_every` steps."""
        (update,) = plan.updates
        loss_sum, loss_tokens = reports.sums["loss"]
        samples, real, computed = _token_counts(update.microbatches).tolist()
        self.consumed += int(samples)
        values = {
            "loss": (loss_sum / loss_tokens.clamp(min=1)).item(),
            "samples": samples,
            "tokens": real,
            "loss_tokens": loss_tokens.item(),
            "tokens_per_s": real / reports.seconds,
            "padding_fraction": 1 - real / computed,
            "consumed_samples": self.consumed,
        }
        val_every = self.config.trainer.val_every
        if self.validation_microbatches is not None and val_every and (step + 1) % val_every == 0:
            values["val_loss"] = self._validation_loss()
        return values

    def progress(self, values: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{values['loss']:.4f}", "lr": f"{values['lr']:.2e}"}

    def state(self) -> dict[str, Any]:
        return {"consumed_samples": self.consumed}

    def restore(self, state: dict[str, Any]) -> int:
        self.consumed = state["consumed_samples"]
        return self.plan.position(state["step"])


def run_sft(config: SFTConfig) -> Path:
    """Train; return the directory of the last checkpoint. Collective: every rank calls it."""
    check_config(config)
    run_dir = Path(config.run.dir)
    initialize(config.parallel, seed=config.trainer.seed)
    try:
        hf_dir = prepare_run_dir(config, "sft")
        train_set, validation = _datasets(config, hf_dir)
        hf_config = AutoConfig.from_pretrained(hf_dir)
        pad_id = AutoTokenizer.from_pretrained(hf_dir).pad_token_id or 0
        positions = family_of(hf_config).position_ids(hf_config)
        trainer = config.trainer
        plan = _plan(config, train_set, "data.train")
        say(
            "sft",
            f"{len(train_set)} samples (≤ {config.data.max_length} tokens) → {plan.summary()}; "
            f"{plan.steps_per_epoch} steps per epoch × {trainer.epochs} epochs",
        )
        validation_source = None
        if validation is not None:
            val_plan = _plan(config, validation, "data.validation")
            val_microbatches = _microbatch_source(config, validation, val_plan, pad_id, positions)
            val_steps = min(trainer.val_batches, val_plan.steps_per_epoch)
            validation_source = lambda: [val_microbatches(i) for i in range(val_steps)]  # noqa: E731

        policy = build_policy(config, hf_dir, partial(say, "sft"))
        stage = SFTStage(
            config,
            policy,
            plan,
            _microbatch_source(config, train_set, plan, pad_id, positions),
            validation_source,
        )
        return export_final(run_dir, train(config, policy, stage), config.export, partial(say, "sft"))
    finally:
        release_run_dir(config.run.dir)  # held by rank 0; nothing to do elsewhere
        shutdown()
