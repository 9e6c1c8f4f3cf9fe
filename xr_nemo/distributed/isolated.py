"""Run a function in a fresh single process, outside this job's process group.

Conversion between HF and megatron-core checkpoints sets up its own one-process parallel state; inside a
training job (torchrun, srun) rank 0 runs it this way. The function's result comes back, and so does
its exception (an `XrNemoError` keeps its message), without parsing any output.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from xr_nemo.distributed.launch_env import LAUNCHER_VARIABLES

T = TypeVar("T")


def _prepare(warning_filters: list) -> None:
    """In the child: forget the launcher, and keep the parent's warning filters (the CLI's quiet ones)."""
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    warnings.filters[:] = warning_filters


def run_isolated(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` in a spawned process that does not see this job's launcher variables."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_prepare, initargs=(list(warnings.filters),)
    ) as pool:
        return pool.submit(fn, *args, **kwargs).result()
