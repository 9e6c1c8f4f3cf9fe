"""The optimizer-step loop: micro-batches through megatron-core's schedule, LR schedule, gradient
clipping, metrics, validation, checkpoints and exact resume. Knows no model and no loss: it gets a
forward step and a function from the step number to this rank's micro-batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from tqdm import tqdm

from xr_nemo.config.schema import SFTConfig
from xr_nemo.errors import ConfigError
from xr_nemo.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from xr_nemo.training.fault_tolerance import FaultTolerance
from xr_nemo.training.metrics import MetricsWriter
from xr_nemo.training.optimizer import set_learning_rate
from xr_nemo.training.schedule import learning_rate
from xr_nemo.training.stragglers import StragglerMonitor, report_stragglers

Batch = dict[str, torch.Tensor]


@dataclass
class TrainingJob:
    model: torch.nn.Module  # unwrapped: its sharded state dict is the checkpoint
    wrapped: torch.nn.Module  # megatron-core DistributedDataParallel around it
    optimizer: MegatronOptimizer
    forward_step: Callable
    train_microbatches: Callable[[int], list[Batch]]  # step → this rank's micro-batches
    validation_microbatches: Callable[[], list[list[Batch]]] | None
    steps_per_epoch: int
    hf_dir: Path
    resume_from: Path | None  # a checkpoint to continue from (see `resume_point`)


def resume_point(config: SFTConfig) -> Path | None:
    resume = config.trainer.resume
    if resume == "never":
        if latest_checkpoint(config.run.dir) is not None:
            raise ConfigError(
                f"{config.run.dir} already has checkpoints and trainer.resume=never",
                where="run.dir",
                fix="use a new run.dir, or trainer.resume=auto to continue",
            )
        return None
    if resume == "auto":
        return latest_checkpoint(config.run.dir)
    if not Path(resume).is_dir():
        raise ConfigError(f"checkpoint {resume} does not exist", where="trainer.resume")
    return Path(resume)


def _sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Sums over every rank that holds other tokens: data-parallel and context-parallel ranks (each of
    those holds a slice of the sequences), and pipeline stages (only the last one reports)."""
    dist.all_reduce(values, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(values, group=parallel_state.get_pipeline_model_parallel_group())
    return values


def run_schedule(
    forward_step: Callable, model: torch.nn.Module, microbatches: list[Batch], forward_only: bool
) -> list[dict[str, torch.Tensor]]:
    """Micro-batches through megatron-core's schedule (pipelined when PP > 1); the loss functions'
    reports on the last pipeline stage, one per micro-batch, and nothing elsewhere."""
    first = microbatches[0]["tokens"]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=[model],
        num_microbatches=len(microbatches),
        seq_length=first.shape[1] * parallel_state.get_context_parallel_world_size(),  # whole sequences
        micro_batch_size=first.shape[0],
        forward_only=forward_only,
    )


def summed_report(outputs: list[dict[str, torch.Tensor]], key: str, width: int) -> torch.Tensor:
    """`key` of every micro-batch's report summed over micro-batches and ranks (see
    `_sum_over_ranks`)."""
    totals = torch.zeros(width, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage():
        for output in outputs:
            totals += output[key].double().cpu()
    return _sum_over_ranks(totals)


def _run_schedule(
    forward_step: Callable, job: TrainingJob, microbatches: list[Batch], forward_only: bool
) -> torch.Tensor:
    """[loss sum, loss tokens] over the global batch, on every rank."""
    outputs = run_schedule(forward_step, job.wrapped, microbatches, forward_only)
    return summed_report(outputs, "loss", 2)


def _validation_loss(job: TrainingJob) -> float:
    job.wrapped.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for microbatches in job.validation_microbatches():
            totals += _run_schedule(job.forward_step, job, microbatches, forward_only=True)
    job.wrapped.train()
    return (totals[0] / totals[1].clamp(min=1)).item()


def _token_counts(microbatches: list[Batch]) -> torch.Tensor:
    """[samples, real tokens, computed tokens] over the data-parallel group. The counts are those of
    whole sequences: context-parallel ranks share the samples, each computing a slice."""
    cp_size = parallel_state.get_context_parallel_world_size()
    counts = torch.tensor(
        [[int(b["num_samples"]), int(b["real_tokens"]), b["tokens"].numel() * cp_size] for b in microbatches],
        dtype=torch.float64,
    ).sum(0)
    dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    return counts


def train(config: SFTConfig, job: TrainingJob) -> int:
    """Run to the end (or `trainer.max_steps`); return the last step. Collective."""
    trainer = config.trainer
    total_steps = job.steps_per_epoch * trainer.epochs
    last_step = min(total_steps, trainer.max_steps) if trainer.max_steps is not None else total_steps

    step, consumed, state = 0, 0, None
    if job.resume_from is not None:
        state = load_checkpoint(job.resume_from, job.model, job.optimizer)
        step, consumed = state["step"], state["consumed_samples"]
    fault_tolerance = FaultTolerance(config.fault_tolerance, state)
    stragglers = StragglerMonitor(config.stragglers)
    train_forward_step = stragglers.timed(fault_tolerance.drilled(job.forward_step))
    is_writer = dist.get_rank() == 0
    if is_writer and job.resume_from is not None:
        print(f"[sft] resumed from {job.resume_from} at step {step}", flush=True)
    metrics = MetricsWriter(config.run.dir, resumed_step=step) if is_writer else None
    bar = tqdm(
        total=last_step, initial=step, desc="train", unit="step", disable=not (is_writer and trainer.progress)
    )

    def checkpoint(at: int) -> None:
        train_state = {
            "step": at,
            "consumed_samples": consumed,
            "epoch": at // job.steps_per_epoch,
            **fault_tolerance.train_state(),
        }
        save_checkpoint(
            config.run.dir, at, job.model, job.optimizer, train_state, job.hf_dir, config.checkpoint.keep_last
        )

    job.wrapped.train()
    while step < last_step:
        lr = learning_rate(step, config.optim.lr, config.scheduler, total_steps, job.steps_per_epoch)
        set_learning_rate(job.optimizer, lr)
        microbatches = job.train_microbatches(step)
        start = time.perf_counter()
        job.wrapped.zero_grad_buffer()
        job.optimizer.zero_grad()
        loss_sum, loss_tokens = _run_schedule(train_forward_step, job, microbatches, forward_only=False)
        _, grad_norm, _ = job.optimizer.step()
        elapsed = time.perf_counter() - start
        samples, real, computed = _token_counts(microbatches).tolist()
        step += 1
        consumed += int(samples)
        values = {
            "loss": (loss_sum / loss_tokens.clamp(min=1)).item(),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "tokens_per_s": real / elapsed,
            "padding_fraction": 1 - real / computed,
            "consumed_samples": consumed,
            "epoch": (step - 1) // job.steps_per_epoch,
            "step_time_s": elapsed,
        }
        if job.validation_microbatches is not None and trainer.val_every and step % trainer.val_every == 0:
            values["val_loss"] = _validation_loss(job)
        values |= report_stragglers(stragglers.after_step(step), "sft")
        if metrics is not None:
            metrics.write(step, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update()
        every = config.checkpoint.every_steps
        if (every and step % every == 0) or (step == last_step and config.checkpoint.at_end):
            checkpoint(step)
        fault_tolerance.after_step(step)
    fault_tolerance.close()
    bar.close()
    if metrics is not None:
        metrics.close()
    return step
