"""Fault tolerance around the step loops (SFT and GRPO).

Under nvidia-resiliency-ext's `ft_launcher` (a torchrun with a rank monitor per rank), every step sends
a heartbeat. A rank that raises, dies or stops beating (a hung collective, a stuck GPU) makes the
launcher stop every rank and start them again, up to `--max-restarts` times; the restarted ranks
resume from the latest checkpoint (`trainer.resume=auto`), so a fault costs at most the steps since
it. Outside `ft_launcher` nothing is sent.

The launcher's heartbeat timeout is a guess; after `learn_timeout_after` steps the monitor switches to
one learned from the observed step times, and checkpoints keep it, so a restart starts with it.

`inject_fault` is a drill on one rank, from one step of the first launch on: `exception` and `hang`
prove on a given cluster that the whole path (detection, restart, resume) works; `slow` makes the
rank's forward passes take 3× as long, for the straggler report to find.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from xr_nemo.config.schema import FaultToleranceConfig
from xr_nemo.errors import ConfigError

MONITOR_SOCKET_ENV = "FT_RANK_MONITOR_IPC_SOCKET"  # set by ft_launcher for every rank it starts
RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"
FAULTS = ("exception", "hang", "slow")
TRAIN_STATE_KEY = "heartbeat_timeouts"


class InjectedFault(RuntimeError):
    """The drill's exception: deliberately not an `XrNemoError`, so it fails like a real crash."""


def launch_attempt() -> int:
    """0 on the first launch, n after the launcher's n-th restart of the worker group."""
    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def _check(config: FaultToleranceConfig) -> None:
    if config.inject_fault is not None and config.inject_fault not in FAULTS:
        raise ConfigError(
            f"unknown fault {config.inject_fault!r}",
            where="fault_tolerance.inject_fault",
            fix=f"use one of {', '.join(FAULTS)}, or null",
        )
    if config.inject_fault is not None and not 0 <= config.inject_on_rank < dist.get_world_size():
        raise ConfigError(
            f"rank {config.inject_on_rank} does not exist in a job of {dist.get_world_size()} ranks",
            where="fault_tolerance.inject_on_rank",
        )
    if config.inject_fault == "hang" and not os.environ.get(MONITOR_SOCKET_ENV):
        raise ConfigError(
            "a hang drill needs a rank monitor to end it, and this job was not started by ft_launcher",
            where="fault_tolerance.inject_fault",
            fix="launch with ft_launcher (slurm: FAULT_TOLERANCE=1), or drill with inject_fault=exception",
        )


class FaultTolerance:
    """Collective: every rank makes one and calls `after_step` at every step."""

    def __init__(self, config: FaultToleranceConfig, train_state: dict[str, Any] | None) -> None:
        _check(config)
        self.config = config
        self.client = None
        if os.environ.get(MONITOR_SOCKET_ENV):
            from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient

            self.client = RankMonitorClient()
            if train_state and TRAIN_STATE_KEY in train_state:
                self.client.load_state_dict(train_state[TRAIN_STATE_KEY])
            self.client.init_workload_monitoring()
            self.client.send_heartbeat()  # the first one ends the (long) initial timeout
        self._resumed_step = (train_state or {}).get("step", 0)
        self._step = self._resumed_step + 1  # the step being run

    def drilled(self, forward_step: Callable) -> Callable:
        """`forward_step`, slowed down on the drilled rank under `inject_fault=slow`."""
        if self.config.inject_fault != "slow" or not self._drilled_rank():
            return forward_step

        @functools.wraps(forward_step)
        def slow_forward_step(*args, **kwargs):
            start = time.perf_counter()
            result = forward_step(*args, **kwargs)
            if self._step >= self.config.inject_at_step:
                time.sleep(2 * (time.perf_counter() - start))
            return result

        return slow_forward_step

    def _drilled_rank(self) -> bool:
        return dist.get_rank() == self.config.inject_on_rank and launch_attempt() == 0

    def after_step(self, step: int) -> None:
        self._inject(step)
        self._step = step + 1
        if self.client is None:
            return
        self.client.send_heartbeat()
        if step - self._resumed_step == self.config.learn_timeout_after:
            self.client.calculate_and_set_hb_timeouts(skip_if_not_ready=True)  # collective

    def train_state(self) -> dict[str, Any]:
        """What checkpoints keep: the learned timeouts (equal on every rank)."""
        return {TRAIN_STATE_KEY: self.client.state_dict()} if self.client is not None else {}

    def close(self) -> None:
        if self.client is not None:
            self.client.shutdown_workload_monitoring()
            self.client = None

    def _inject(self, step: int) -> None:
        config = self.config
        if config.inject_fault not in ("exception", "hang") or step != config.inject_at_step:
            return
        if not self._drilled_rank():
            return
        print(
            f"[fault-tolerance] drill: {config.inject_fault} on rank {dist.get_rank()} at step {step}",
            file=sys.stderr,
            flush=True,
        )
        if config.inject_fault == "exception":
            raise InjectedFault(f"fault drill: exception on rank {dist.get_rank()} at step {step}")
        while True:  # a hang: no heartbeat, no collective, until the monitor kills this rank
            time.sleep(60)
