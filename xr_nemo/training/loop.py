"""The one training loop, for every stage: LR schedule, fault tolerance, slow-rank reports, metrics and
TensorBoard, progress, checkpoint cadence, exact resume and teardown. It knows no model, no data and no
loss: a stage (SFT, GRPO) supplies one step and the state it needs to resume."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from tqdm import tqdm

from xr_nemo.config.schema import PlateauConfig, TrainingConfig
from xr_nemo.distributed.devices import all_reduce_host, broadcast_host
from xr_nemo.errors import ConfigError
from xr_nemo.training.checkpoint import save_checkpoint
from xr_nemo.training.fault_tolerance import FaultTolerance
from xr_nemo.training.metrics import MetricsWriter
from xr_nemo.training.optimizer import set_learning_rate
from xr_nemo.training.resume import ResumePoint, load_resume_point
from xr_nemo.training.schedule import learning_rate
from xr_nemo.training.stragglers import StragglerMonitor, report_stragglers

Batch = dict[str, torch.Tensor]
PLATEAU_STATE = "plateau_history"


@dataclass
class Policy:
    """The model being trained, as every stage holds it."""

    model: torch.nn.Module  # unwrapped: its sharded state dict is the checkpoint
    wrapped: torch.nn.Module  # megatron-core DistributedDataParallel around it
    optimizer: MegatronOptimizer
    hf_dir: Path  # config.json and tokenizer: copied into every checkpoint
    initial_weights: Path  # the checkpoint it started from (GRPO's reference model loads it too)
    resume_from: ResumePoint | None  # a training checkpoint to continue from instead


class StepHooks(Protocol):
    def wrap(self, forward_step: Callable) -> Callable:
        """The stage's training forward step, timed for slow-rank reports and drilled for faults."""

    def add_time(self, seconds: float) -> None:
        """Own work the stage timed itself (GRPO's generation), for slow-rank reports."""


class Stage(Protocol):
    """What a stage supplies to the loop."""

    name: str  # prefixes its messages: "sft", "grpo"
    steps_per_epoch: int

    def train_step(self, step: int, hooks: StepHooks) -> dict[str, float]:
        """Optimizer step(s) number `step` (0-based); returns the step's metrics."""

    def progress(self, values: dict[str, float]) -> dict[str, str]:
        """The few metrics the progress bar shows."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides weights, optimizer and RNG: where the data stands."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state()`."""


class _Plateau:
    """The history of the watched metric (kept in checkpoints, so a resumed run stops where the
    uninterrupted one would) and the stop decision, taken on rank 0 and shared."""

    def __init__(self, config: PlateauConfig, state: dict[str, Any] | None) -> None:
        self.config = config
        self.history: list[float] = list((state or {}).get(PLATEAU_STATE, []))

    def reached(self, values: dict[str, float]) -> bool:
        config = self.config
        if config.metric is None:
            return False
        if config.metric not in values:
            raise ConfigError(
                f"the stage reports no metric {config.metric!r}",
                where="trainer.stop_on_plateau.metric",
                fix=f"one of {', '.join(sorted(values))}",
            )
        self.history = [*self.history, float(values[config.metric])][-2 * config.window :]
        stop = torch.tensor([0.0])
        if len(self.history) == 2 * config.window and dist.get_rank() == 0:
            before = sum(self.history[: config.window]) / config.window
            after = sum(self.history[config.window :]) / config.window
            gain = after - before if config.direction == "up" else before - after
            stop[0] = float(gain < config.min_change)
        return bool(broadcast_host(stop, src=0).item())

    def train_state(self) -> dict[str, Any]:
        return {PLATEAU_STATE: self.history} if self.config.metric is not None else {}


class _Hooks:
    def __init__(self, fault_tolerance: FaultTolerance, stragglers: StragglerMonitor) -> None:
        self._fault_tolerance, self._stragglers = fault_tolerance, stragglers

    def wrap(self, forward_step: Callable) -> Callable:
        return self._stragglers.timed(self._fault_tolerance.drilled(forward_step))

    def add_time(self, seconds: float) -> None:
        self._stragglers.add(seconds)


def say(stage: str, message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[{stage}] {message}", flush=True)


def train(config: TrainingConfig, policy: Policy, stage: Stage) -> int:
    """Run `stage` to the end of its epochs (or `trainer.max_steps`); return the last step. Collective."""
    trainer = config.trainer
    total_steps = stage.steps_per_epoch * trainer.epochs
    last_step = total_steps if trainer.max_steps is None else min(total_steps, trainer.max_steps)

    step, state = 0, None
    if policy.resume_from is not None:
        resumed, state = load_resume_point(
            config, policy.resume_from, policy.model, policy.optimizer, lambda line: say(stage.name, line)
        )
        step = state["step"]
        stage.restore(state)
        say(stage.name, f"resumed from {resumed} at step {step}")
    fault_tolerance = FaultTolerance(config.fault_tolerance, state)
    plateau = _Plateau(trainer.stop_on_plateau, state)
    stragglers = StragglerMonitor(config.stragglers)
    hooks = _Hooks(fault_tolerance, stragglers)
    is_writer = dist.get_rank() == 0
    metrics = MetricsWriter(config.run.dir, resumed_step=step) if is_writer else None
    bar = tqdm(
        total=last_step,
        initial=step,
        desc=stage.name,
        unit="step",
        disable=not (is_writer and trainer.progress),
    )
    policy.wrapped.train()
    while step < last_step:
        lr = learning_rate(step, config.optim.lr, config.scheduler, total_steps, stage.steps_per_epoch)
        set_learning_rate(policy.optimizer, lr)
        start = time.perf_counter()
        values = stage.train_step(step, hooks)
        step += 1
        values |= {"lr": lr, "step_time_s": time.perf_counter() - start}
        values |= report_stragglers(stragglers.after_step(step), stage.name)
        if metrics is not None:
            metrics.write(step, values)
        bar.set_postfix(stage.progress(values))
        bar.update()
        if plateau.reached(values):
            say(stage.name, f"{trainer.stop_on_plateau.metric} has plateaued: stopping at step {step}")
            last_step = step
        every = config.checkpoint.every_steps
        if (every and step % every == 0) or (step == last_step and config.checkpoint.at_end):
            train_state = {"step": step, **stage.state(), **fault_tolerance.train_state()}
            train_state |= plateau.train_state()
            save_checkpoint(
                config.run.dir,
                step,
                policy.model,
                policy.optimizer,
                train_state,
                policy.hf_dir,
                config.checkpoint.keep_last,
            )
        fault_tolerance.after_step(step)
    fault_tolerance.close()
    bar.close()
    if metrics is not None:
        metrics.close()
    return step


def _sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Sums over every rank that holds other tokens: data-parallel and context-parallel ranks (each of
    those holds a slice of the sequences), and pipeline stages (only the last one reports)."""
    values = all_reduce_host(values, parallel_state.get_data_parallel_group(with_context_parallel=True))
    return all_reduce_host(values, parallel_state.get_pipeline_model_parallel_group())


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
