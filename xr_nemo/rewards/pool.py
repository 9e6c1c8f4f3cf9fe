"""Reward scoring in worker processes with a hard deadline per answer.

A worker that overruns its deadline (a pathological LaTeX expression, a number with a billion digits) is
killed and replaced, and the answer scores 0; so does one that crashes. Workers are fresh interpreters
(`python -m xr_nemo.rewards.worker`), so they inherit neither the trainer's threads and process groups nor
its `__main__`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait

from xr_nemo.rewards.choice import choice_reward
from xr_nemo.rewards.format import format_reward
from xr_nemo.rewards.math import math_score


@dataclass(frozen=True)
class RewardTask:
    """One completion to score. `options` (letter → text) marks a multiple-choice item."""

    completion: str
    gold: str
    options: dict[str, str] | None = None


@dataclass(frozen=True)
class RewardSpec:
    """total = correctness (math, or choice for items with options) + format_weight × format."""

    correctness: str = "auto"  # auto | math | choice
    format_weight: float = 0.0


@dataclass
class Score:
    correct: float
    format: float
    reward: float
    timed_out: bool = False
    gold_unreadable: bool = False  # math-verify could not read the gold: compared as strings


def score_task(task: RewardTask, spec: RewardSpec) -> Score:
    """In-process scoring (what the workers run)."""
    kind = spec.correctness if spec.correctness != "auto" else ("choice" if task.options else "math")
    if kind == "choice":
        correct = choice_reward(task.completion, task.gold, task.options or {})
        unreadable = False
    else:
        correct, readable = math_score(task.completion, task.gold)
        unreadable = not readable
    formatted = format_reward(task.completion) if spec.format_weight else 0.0
    return Score(correct, formatted, correct + spec.format_weight * formatted, gold_unreadable=unreadable)


@dataclass
class _Worker:
    process: subprocess.Popen
    outbox: Connection  # to the worker
    connection: Connection  # from the worker
    busy_with: int | None = None
    since: float = 0.0


@dataclass
class RewardPool:
    """`score(tasks)` → one `Score` per task, in order. Use as a context manager, or call `close()`."""

    spec: RewardSpec = field(default_factory=RewardSpec)
    workers: int = 2
    timeout_s: float = 5.0
    _pool: list[_Worker] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._pool = [self._start() for _ in range(max(1, self.workers))]

    def _start(self) -> _Worker:
        process = subprocess.Popen(
            [sys.executable, "-m", "xr_nemo.rewards.worker", json.dumps(asdict(self.spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        outbox = Connection(os.dup(process.stdin.fileno()), readable=False)
        inbox = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        return _Worker(process, outbox, inbox)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.wait()
        worker.outbox.close()
        worker.connection.close()
        return self._start()

    def score(self, tasks: list[RewardTask]) -> list[Score]:
        results: list[Score | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        while pending or any(w.busy_with is not None for w in self._pool):
            for worker in self._pool:
                if worker.busy_with is None and pending:
                    index = pending.pop()
                    worker.outbox.send((index, tasks[index]))
                    worker.busy_with, worker.since = index, time.monotonic()
            busy = [w for w in self._pool if w.busy_with is not None]
            deadline = min(w.since for w in busy) + self.timeout_s
            ready = wait([w.connection for w in busy], timeout=max(0.0, deadline - time.monotonic()))
            for slot, worker in enumerate(self._pool):
                if worker.busy_with is None:
                    continue
                index = worker.busy_with
                if worker.connection in ready:
                    try:
                        _, results[index] = worker.connection.recv()
                        worker.busy_with = None
                        continue
                    except (EOFError, OSError):  # the worker died mid-answer
                        results[index] = Score(0.0, 0.0, 0.0, timed_out=True)
                        self._pool[slot] = self._replace(worker)
                elif time.monotonic() - worker.since >= self.timeout_s:
                    results[index] = Score(0.0, 0.0, 0.0, timed_out=True)
                    self._pool[slot] = self._replace(worker)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for worker in self._pool:
            with contextlib.suppress(OSError):
                worker.outbox.send(None)
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.outbox.close()
            worker.connection.close()
        self._pool = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
