"""Straggler detection: which ranks are slow at their own work.

In a synchronous job every rank's step takes as long as the slowest one's, so step times cannot tell
who is slow. Each rank instead times its own computation — the forward passes of its micro-batches,
and in GRPO also its rollout generation — and every `report_every` steps the ranks compare: a rank
whose time is more than `threshold` × the fastest rank's of the same pipeline stage (the ranks that
do the same work) is reported, with its node. On GPU the forward passes are timed with CUDA events,
so asynchronous kernel launches are not mistaken for work.
nvidia-resiliency-ext's detector does the same with CUPTI kernel statistics, which need a GPU; this
one also runs on CPU (gloo), where the tests check it.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from xr_nemo.config.schema import StragglerConfig
from xr_nemo.distributed.devices import all_gather_host


@dataclass(frozen=True)
class StragglerReport:
    step: int
    seconds: list[float]  # each rank's own-work seconds since the last report
    ratios: list[float]  # each rank's time over the fastest of its pipeline stage
    nodes: list[str]
    slow: list[int]  # ranks beyond the threshold, slowest first

    @classmethod
    def of(
        cls, step: int, seconds: list[float], stages: list[int], nodes: list[str], threshold: float
    ) -> StragglerReport:
        fastest: dict[int, float] = {}
        for time_s, stage in zip(seconds, stages, strict=True):
            fastest[stage] = min(time_s, fastest.get(stage, time_s))
        ratios = [t / max(fastest[stage], 1e-9) for t, stage in zip(seconds, stages, strict=True)]
        slow = sorted((r for r, ratio in enumerate(ratios) if ratio > threshold), key=lambda r: -ratios[r])
        return cls(step, seconds, ratios, nodes, slow)

    def describe(self) -> str:
        ranks = ", ".join(
            f"rank {rank} on {self.nodes[rank]} ({self.ratios[rank]:.2f}× the fastest of its stage)"
            for rank in self.slow
        )
        return f"step {self.step}: slow ranks: {ranks}"


class _GPUTimer:
    def __init__(self) -> None:
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start: torch.cuda.Event) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((start, end))

    def collect(self) -> float:
        if self._pending:
            self._pending[-1][1].synchronize()
        seconds = sum(start.elapsed_time(end) for start, end in self._pending) / 1000
        self._pending.clear()
        return seconds


class _CPUTimer:
    def __init__(self) -> None:
        self._seconds = 0.0

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, start: float) -> None:
        self._seconds += time.perf_counter() - start

    def collect(self) -> float:
        seconds, self._seconds = self._seconds, 0.0
        return seconds


class StragglerMonitor:
    """Collective: every rank makes one, times its work through `timed` or `add`, and calls
    `after_step` at every step; rank 0 gets the report."""

    def __init__(self, config: StragglerConfig) -> None:
        self.config = config  # its bounds are checked with the config (`stragglers.*` in docs/config.md)
        self._timer = _GPUTimer() if torch.cuda.is_available() else _CPUTimer()
        self._other_seconds = 0.0
        places: list[tuple[str, int]] = [("", 0)] * dist.get_world_size()
        dist.all_gather_object(
            places, (socket.gethostname(), parallel_state.get_pipeline_model_parallel_rank())
        )
        self._nodes = [node for node, _ in places]
        self._stages = [stage for _, stage in places]

    def timed(self, forward_step: Callable) -> Callable:
        """`forward_step` (megatron-core's forward_step_func), timed."""

        @functools.wraps(forward_step)
        def timed_forward_step(*args, **kwargs):
            start = self._timer.start()
            result = forward_step(*args, **kwargs)
            self._timer.stop(start)
            return result

        return timed_forward_step

    def add(self, seconds: float) -> None:
        """Own work timed by the caller (GRPO's generation)."""
        self._other_seconds += seconds

    def after_step(self, step: int) -> StragglerReport | None:
        """Every `report_every` steps (collective): the report on rank 0, None elsewhere."""
        every = self.config.report_every
        if every is None or step % every:
            return None
        mine = torch.tensor([self._timer.collect() + self._other_seconds], dtype=torch.float64)
        self._other_seconds = 0.0
        gathered = all_gather_host(mine)
        if dist.get_rank() != 0:
            return None
        times = [float(t) for t in gathered]
        return StragglerReport.of(step, times, self._stages, self._nodes, self.config.threshold)


def report_stragglers(report: StragglerReport | None, stage: str) -> dict[str, float]:
    """Say which ranks are slow (rank 0); the step's `straggler_*` metrics."""
    if report is None:
        return {}
    if report.slow:
        print(f"[{stage}] {report.describe()}", flush=True)
    slowest = max(range(len(report.ratios)), key=report.ratios.__getitem__)
    return {
        "straggler_slowest_ratio": report.ratios[slowest],
        "straggler_slowest_rank": slowest,
        "straggler_slow_ranks": len(report.slow),
    }
