"""The one training loop, for every stage: the optimizer steps (zero_grad, megatron-core's schedule,
step) and their LR schedule, epochs counted in the data consumed, fault tolerance, slow-rank reports,
metrics and TensorBoard, progress, checkpoint cadence, exact resume and teardown. It knows no model, no
data and no loss: a stage (SFT, GRPO) supplies each step's forward steps and micro-batches, the data they
drew, what its reports mean, and the state it needs to resume."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from tqdm import tqdm

from xr_nemo.config.schema import PlateauConfig, TrainerConfig, TrainingConfig
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
    def add_time(self, seconds: float) -> None:
        """Own work the stage timed itself (GRPO's generation), for slow-rank reports."""


@dataclass
class Update:
    """One optimizer step: `forward_step` (megatron-core's forward step function) over `microbatches`."""

    forward_step: Callable
    microbatches: list[Batch]


@dataclass
class StepPlan:
    """What a stage hands the loop for one step: its updates, and the data it drew for them."""

    updates: list[Update]
    consumed: int  # in the unit of `Stage.epoch_size`; all of it, dynamic sampling's dropped groups too


@dataclass
class Reports:
    """What the loop hands back to the stage once a step's updates have run."""

    sums: dict[str, torch.Tensor]  # each of `Stage.summed_reports`, over micro-batches, ranks and updates
    grad_norms: list[float]  # one per update (nan where the optimizer gives none)
    seconds: float  # the updates' wall time

    @property
    def grad_norm(self) -> float:
        return sum(self.grad_norms) / len(self.grad_norms)


class Stage(Protocol):
    """What a stage supplies to the loop."""

    name: str  # prefixes its messages: "sft", "grpo"
    epoch_size: int  # the data one epoch holds (samples, prompts): `StepPlan.consumed` counts toward it
    planned_steps_per_epoch: int  # an estimate where steps draw varying amounts of data (`planned_steps`)
    # the keys of the loss functions' reports that are sums, with their widths: the loop adds them up
    summed_reports: Mapping[str, int]

    def prepare(self, step: int, hooks: StepHooks) -> StepPlan:
        """Step number `step` (0-based): draw its data and make its updates (and whatever they need
        first: GRPO's rollouts, rewards and log-probabilities)."""

    def metrics(self, step: int, plan: StepPlan, reports: Reports) -> dict[str, float]:
        """The step's metrics, from `prepare`'s plan and the reports of its updates."""

    def progress(self, values: dict[str, float]) -> dict[str, str]:
        """The few metrics the progress bar shows."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides weights, optimizer and RNG: where the data stands."""

    def restore(self, state: dict[str, Any]) -> int:
        """Continue from a checkpoint's `state()`; return the data consumed before it."""


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
        """A training forward step, timed for slow-rank reports and drilled for faults."""
        return self._stragglers.timed(self._fault_tolerance.drilled(forward_step))

    def add_time(self, seconds: float) -> None:
        self._stragglers.add(seconds)


def say(stage: str, message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[{stage}] {message}", flush=True)


def planned_steps(config: TrainingConfig, stage: Stage) -> int:
    """The run's steps as planned: `trainer.epochs` × the stage's planned steps per epoch. The LR
    schedule needs a total before the run (warm-up fraction, cosine) and takes this one. It is an
    estimate where steps draw varying amounts of data (GRPO's dynamic sampling): the run itself ends
    where its data does (`_Position.finished`)."""
    return stage.planned_steps_per_epoch * config.trainer.epochs


@dataclass(frozen=True)
class _Position:
    """Where a run stands: the steps taken and the data they consumed; epochs are read from the data."""

    step: int
    consumed: int
    epoch_size: int

    @property
    def epoch(self) -> int:
        return self.consumed // self.epoch_size

    def after(self, plan: StepPlan) -> _Position:
        return _Position(self.step + 1, self.consumed + plan.consumed, self.epoch_size)

    def finished(self, trainer: TrainerConfig) -> bool:
        """At the end of `trainer.epochs` of data, or of `trainer.max_steps`."""
        out_of_steps = trainer.max_steps is not None and self.step >= trainer.max_steps
        return out_of_steps or self.consumed >= trainer.epochs * self.epoch_size


def train(config: TrainingConfig, policy: Policy, stage: Stage) -> int:
    """Run `stage` to the end of `trainer.epochs` of its data (or `trainer.max_steps`); return the last
    step. Collective."""
    trainer = config.trainer
    total_steps = planned_steps(config, stage)
    at, state = _Position(0, 0, stage.epoch_size), None
    if policy.resume_from is not None:
        resumed, state = load_resume_point(
            config, policy.resume_from, policy.model, policy.optimizer, lambda line: say(stage.name, line)
        )
        at = _Position(state["step"], stage.restore(state), stage.epoch_size)
        say(stage.name, f"resumed from {resumed} at step {at.step}")
    fault_tolerance = FaultTolerance(config.fault_tolerance, state)
    plateau = _Plateau(trainer.stop_on_plateau, state)
    stragglers = StragglerMonitor(config.stragglers)
    hooks = _Hooks(fault_tolerance, stragglers)
    is_writer = dist.get_rank() == 0
    metrics = MetricsWriter(config.run.dir, resumed_step=at.step) if is_writer else None
    bar = tqdm(
        total=total_steps if trainer.max_steps is None else min(total_steps, trainer.max_steps),
        initial=at.step,
        desc=stage.name,
        unit="step",
        disable=not (is_writer and trainer.progress),
    )
    policy.wrapped.train()
    stop = at.finished(trainer)
    while not stop:
        lr = learning_rate(at.step, config.optim.lr, config.scheduler, total_steps, at.epoch)
        set_learning_rate(policy.optimizer, lr)
        start = time.perf_counter()
        plan = stage.prepare(at.step, hooks)
        reports = run_updates(policy, plan.updates, stage.summed_reports, hooks.wrap)
        values = stage.metrics(at.step, plan, reports)
        values |= {"grad_norm": reports.grad_norm, "epoch": at.epoch, "lr": lr}
        values["step_time_s"] = time.perf_counter() - start
        at = at.after(plan)
        values |= report_stragglers(stragglers.after_step(at.step), stage.name)
        if metrics is not None:
            metrics.write(at.step, values)
        bar.set_postfix(stage.progress(values))
        bar.update()
        stop = at.finished(trainer)
        if plateau.reached(values):
            say(stage.name, f"{trainer.stop_on_plateau.metric} has plateaued: stopping at step {at.step}")
            stop = True
        every = config.checkpoint.every_steps
        if (every and at.step % every == 0) or (stop and config.checkpoint.at_end):
            _save(config, policy, at, stage.state() | fault_tolerance.train_state() | plateau.train_state())
        fault_tolerance.after_step(at.step)
    fault_tolerance.close()
    bar.close()
    if metrics is not None:
        metrics.close()
    return at.step


def _save(config: TrainingConfig, policy: Policy, at: _Position, state: dict[str, Any]) -> None:
    train_state = {"step": at.step, "epoch": at.epoch, **state}
    save_checkpoint(
        config.run.dir,
        at.step,
        policy.model,
        policy.optimizer,
        train_state,
        policy.hf_dir,
        config.checkpoint.keep_last,
    )


def run_updates(
    policy: Policy, updates: list[Update], summed: Mapping[str, int], wrap: Callable[[Callable], Callable]
) -> Reports:
    """Each update is one optimizer step: gradients zeroed, its micro-batches through megatron-core's
    schedule with its forward step (through `wrap`: timing, drills), the optimizer stepped. The reports'
    `summed` keys are added up over micro-batches, ranks and updates. Collective."""
    sums = {key: torch.zeros(width, dtype=torch.float64) for key, width in summed.items()}
    grad_norms = []
    start = time.perf_counter()
    for update in updates:
        policy.wrapped.zero_grad_buffer()
        policy.optimizer.zero_grad()
        outputs = run_schedule(wrap(update.forward_step), policy.wrapped, update.microbatches, False)
        for key, width in summed.items():
            sums[key] += summed_report(outputs, key, width)
        _, grad_norm, _ = policy.optimizer.step()
        grad_norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
    return Reports(sums, grad_norms, time.perf_counter() - start)


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
