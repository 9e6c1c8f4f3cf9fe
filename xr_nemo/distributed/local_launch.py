"""Run a function in N local processes joined by a gloo process group, as torchrun would launch them.
The processes run on the CPU even where there are GPUs: they start with none visible."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.multiprocessing as mp

from xr_nemo.distributed.launch_env import free_local_port


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results: Any) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    try:
        # Serialised to bytes: tensors sent through the queue as shared memory would vanish with
        # this process before the parent reads them.
        buffer = io.BytesIO()
        torch.save(fn(*args), buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


# Every rank starts as a fork of one server process that has imported these once, instead of as a new
# interpreter importing them again (about 10 s each for torch, megatron-core and Transformers). The
# server has only imported modules, run no threads and initialised nothing, so forking it is safe.
PRELOADED = ["torch", "megatron.core", "transformers", "xr_nemo.sft.run", "xr_nemo.grpo.run"]


@contextlib.contextmanager
def _no_visible_gpus() -> Iterator[None]:
    """The fork server, started at the first `proc.start()`, and so every rank forked from it, see no
    GPU: N ranks on one machine's GPUs would share them under NCCL, and these ranks are CPU ranks."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout_s: float = 600) -> list[Any]:
    """Call `fn(*args)` on ranks 0..world_size-1 (new processes); return the results by rank.

    `fn` must be importable by name (a module-level function). A failure on any rank raises here with
    that rank's traceback.
    """
    mp.set_forkserver_preload(PRELOADED)  # takes effect when the server starts, at the first call
    ctx = mp.get_context("forkserver")
    results = ctx.Queue()
    port = free_local_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, results), daemon=False)
        for rank in range(world_size)
    ]
    with _no_visible_gpus():
        for proc in procs:
            proc.start()
    by_rank: dict[int, Any] = {}
    errors = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(by_rank) < world_size and not errors:
            try:
                rank, status, payload = results.get(timeout=2)
            except queue.Empty:
                died = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in by_rank]
                if died:
                    errors.append(f"rank {died[0]} died with exit code {procs[died[0]].exitcode}")
                elif time.monotonic() > deadline:
                    errors.append(f"no result within {timeout_s} s")
                continue
            if status == "error":
                errors.append(f"rank {rank} failed:\n{payload}")
                break
            by_rank[rank] = torch.load(io.BytesIO(payload), weights_only=True)
    finally:
        for proc in procs:
            if errors:
                proc.terminate()
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [by_rank[rank] for rank in range(world_size)]
