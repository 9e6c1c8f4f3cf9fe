"""Learning-rate schedules as pure functions of the step (nothing to save: resume recomputes them)."""

from __future__ import annotations

import math

from xr_nemo.config.schema import SchedulerConfig
from xr_nemo.errors import ConfigError

SCHEDULES = ("constant", "cosine", "epoch_decay")


def warmup_steps(config: SchedulerConfig, total_steps: int) -> int:
    return config.warmup_steps or round(config.warmup_fraction * total_steps)


def learning_rate(step: int, base_lr: float, config: SchedulerConfig, total_steps: int, epoch: int) -> float:
    """The learning rate of step `step` (0-based), drawing from epoch `epoch` (0-based, counted in data):
    linear warm-up from base_lr / warmup, then constant, cosine down to `min_lr` at `total_steps`, or ×
    `epoch_decay` after every epoch."""
    if config.name not in SCHEDULES:
        raise ConfigError(
            f"unknown schedule {config.name!r}", where="scheduler.name", fix=f"use one of {SCHEDULES}"
        )
    warmup = warmup_steps(config, total_steps)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if config.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.min_lr + (base_lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.name == "epoch_decay":
        return base_lr * config.epoch_decay**epoch
    return base_lr
