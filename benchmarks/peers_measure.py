"""How each measured side is timed and its memory taken, the same way on both: the RSS high-water mark
split where training starts, the time of each optimizer step, the seconds spent inside a method."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_gib() -> float:
    """This process's resident-set high-water mark (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


class MemoryPhases:
    """The RSS high-water mark split where training starts: setup (imports, the model, the checkpoint,
    the engine) and training (the steps, and TRL's held-out evaluation after them)."""

    def __init__(self) -> None:
        self.setup_gib: float | None = None

    def training_starts(self) -> None:
        self.setup_gib = peak_rss_gib()
        with contextlib.suppress(OSError):  # Linux: the high-water mark := the current RSS
            Path("/proc/self/clear_refs").write_text("5")

    def result(self) -> dict[str, float | None]:
        training = peak_rss_gib()
        return {
            "peak_gib": max(training, self.setup_gib or 0.0),
            "peak_setup_gib": self.setup_gib,
            "peak_training_gib": training,
        }


def mark_training_start(module: Any, phases: MemoryPhases) -> None:
    """Make `module.train` (our training loop, as the stage's run module imported it) tell `phases`."""
    inner = module.train

    def train(*args, **kwargs):
        phases.training_starts()
        return inner(*args, **kwargs)

    module.train = train


def step_clock(phases: MemoryPhases):
    """A Transformers callback timing each optimizer step (its micro-batches, the optimizer step and the
    zeroing of gradients), as our loop's `step_time_s` does; it tells `phases` when training starts."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.on_step_end_hooks: list[Callable[[], Any]] = []  # run after each step is timed
            self._start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            phases.training_starts()

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)
            for hook in self.on_step_end_hooks:
                hook()

    return StepClock()


def timed(owner: Any, name: str, totals: dict[str, float], key: str) -> None:
    """Wrap `owner.name` so that the seconds spent inside it add up in `totals[key]`."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)
