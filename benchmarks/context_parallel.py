"""Context parallelism: memory and time per rank of one training step on long packed sequences, CP=1
vs CP=2, side by side.

One forward and backward pass of the tiny Qwen2.5-VL (local layer spec) on a micro-batch of one packed
sequence of `--seq-length` tokens (four samples, attended to from their boundaries), as SFT runs it.
Memory is the rise of each rank's peak RSS over its resident memory before its first step (the
kernel's high-water mark, reset first), so it counts activations, attention and the gradients the step
creates; time is the median of the steps after it.

Usage: python benchmarks/context_parallel.py [--seq-length 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xr_nemo.distributed.local_launch import run_distributed


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def step_worker(hf_dir: str, context_parallel: int, seq_length: int, repeats: int) -> dict[str, float]:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.data.packing import collate
    from xr_nemo.distributed import context_parallel as cp
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    parallel = ParallelConfig(context_parallel=context_parallel)
    initialize(parallel, seed=0)
    torch.manual_seed(0)
    model = Qwen25VLModel(AutoConfig.from_pretrained(hf_dir), parallel)
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 500, seq_length // 4 + 1), np.ones(seq_length // 4 + 1)) for _ in range(4)]
    batch = cp.split_batch(collate([samples], pad_id=0, multiple_of=parallel.sequence_multiple))

    def step() -> None:
        loss = model(
            batch["tokens"],
            batch["position_ids"],
            None,
            labels=batch["labels"],
            packed_seq_params=batch["packed_seq_params"],
        )
        loss.sum().backward()
        model.zero_grad(set_to_none=True)

    # Memory of the first step, before the allocator holds freed blocks that later steps reuse unseen.
    before = _status_kib("VmRSS")
    _reset_peak_rss()
    step()
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    shutdown()
    return {"seconds": statistics.median(seconds), "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    with tempfile.TemporaryDirectory() as workdir:
        hf_dir = str(build_tiny_qwen25_vl(Path(workdir) / "hf", TinyQwen25VLSpec(num_kv_heads=2)))
        results = {
            f"CP={size}": run_distributed(step_worker, size, hf_dir, size, args.seq_length, args.repeats)
            for size in (1, 2)
        }
    print(f"one packed sequence of {args.seq_length} tokens: first step peak, median time of {args.repeats}")
    print(f"{'layout':<32}{'rank':>6}{'step peak MiB':>16}{'step s':>10}")
    for name, ranks in results.items():
        for rank, result in enumerate(ranks):
            print(f"{name:<32}{rank:>6}{result['peak_mib']:>16.0f}{result['seconds']:>10.2f}")
    worst = max(result["peak_mib"] for result in results["CP=2"])
    print(f"peak memory per rank, CP=2 / CP=1: {worst / results['CP=1'][0]['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
