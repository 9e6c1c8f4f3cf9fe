"""Context parallelism: memory and time per rank of one training step on long packed sequences, CP=1
vs CP=2, side by side.

One forward and backward pass of the tiny Qwen2.5-VL (local layer spec) on a micro-batch of one packed
sequence of `--seq-length` tokens (four samples, block-diagonal mask), as SFT runs it. Memory is the
rise of each rank's peak RSS over its resident memory before the step (the kernel's high-water mark,
reset first), so it counts activations, the score matrices and the gradients the step creates.
CP=1 runs twice: with megatron-core's `DotProductAttention` (what CP=1 uses) and with the gathering
attention that CP=2 uses, so that the ratio compares layouts, not attention modules.

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


def _use_gathering_attention() -> None:
    """Make the model built next use `ContextParallelAttention` whatever the CP size."""
    from xr_nemo.models.context_parallel_attention import ContextParallelAttention
    from xr_nemo.models.qwen25_vl import language_model
    from xr_nemo.models.specs import local_block_spec

    def spec(config, vp_stage=None):
        block = local_block_spec(config, vp_stage)
        for layer in block.submodules.layer_specs:
            layer.submodules.self_attention.submodules.core_attention = ContextParallelAttention
        return block

    language_model.local_block_spec = spec


def step_worker(
    hf_dir: str, context_parallel: int, seq_length: int, repeats: int, gathering: bool
) -> dict[str, float]:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.data.packing import collate
    from xr_nemo.distributed import context_parallel as cp
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    if gathering:
        _use_gathering_attention()
    parallel = ParallelConfig(context_parallel=context_parallel)
    initialize(parallel, seed=0)
    torch.manual_seed(0)
    model = Qwen25VLModel(AutoConfig.from_pretrained(hf_dir), parallel)
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 500, seq_length // 4 + 1), np.ones(seq_length // 4 + 1)) for _ in range(4)]
    batch = cp.split_batch(collate([samples], pad_id=0, multiple_of=parallel.sequence_multiple))

    def step() -> None:
        loss = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
        loss.sum().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and lazy initialisation
    seconds, peaks = [], []
    for _ in range(repeats):
        before = _status_kib("VmRSS")
        _reset_peak_rss()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        peaks.append((_status_kib("VmHWM") - before) / 1024)
    shutdown()
    return {"seconds": statistics.median(seconds), "peak_mib": statistics.median(peaks)}


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
        runs = {
            "CP=1, megatron-core attention": (1, False),
            "CP=1, gathering attention": (1, True),
            "CP=2, gathering attention": (2, True),
        }
        results = {
            name: run_distributed(step_worker, size, hf_dir, size, args.seq_length, args.repeats, gathering)
            for name, (size, gathering) in runs.items()
        }
    print(f"one packed sequence of {args.seq_length} tokens, median of {args.repeats} steps")
    print(f"{'layout':<32}{'rank':>6}{'step peak MiB':>16}{'step s':>10}")
    for name, ranks in results.items():
        for rank, result in enumerate(ranks):
            print(f"{name:<32}{rank:>6}{result['peak_mib']:>16.0f}{result['seconds']:>10.2f}")
    worst = max(result["peak_mib"] for result in results["CP=2, gathering attention"])
    same = results["CP=1, gathering attention"][0]["peak_mib"]
    print(f"peak memory per rank, CP=2 / CP=1 with the same attention: {worst / same:.2f}")


if __name__ == "__main__":
    main()
