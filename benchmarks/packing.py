"""Packing vs pad-to-longest batching, side by side.

1. Padding share of the computed tokens on a long-tailed length distribution like OpenThoughts-114k's
   (log-normal, a few hundred to 16k tokens): best-fit-decreasing packing into 16,384-token sequences vs
   shuffled micro-batches of 4 padded to their longest sample.
2. Real (non-padding) tokens per second of the tiny SFT step, packed vs unpacked, through `run_sft` on
   the same long-tailed samples.

Usage: python benchmarks/packing.py [--workdir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from xr_nemo.data.packing import best_fit_decreasing


def long_tailed_lengths(count: int, low: int, high: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(low * 6), 0.9, count), low, high)]


def padding_shares(
    lengths: list[int], seq_length: int, micro_batch: int, seed: int = 0
) -> tuple[float, float]:
    bins = best_fit_decreasing(lengths, seq_length)
    packed = 1 - sum(lengths) / (len(bins) * seq_length)
    order = np.random.default_rng(seed).permutation(len(lengths))
    computed = sum(
        micro_batch * max(lengths[i] for i in order[start : start + micro_batch])
        for start in range(0, len(order), micro_batch)
    )
    return packed, 1 - sum(lengths) / computed


def _samples_file(path: Path, lengths: list[int]) -> Path:
    with path.open("w") as handle:
        for index, length in enumerate(lengths):
            words = " ".join(f"w{(index * 7 + k) % 50}" for k in range(length // 3))
            handle.write(json.dumps({"prompt": f"Question {index}?", "response": words}) + "\n")
    return path


def step_throughput(workdir: Path, steps: int) -> dict[str, tuple[float, float]]:
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.sft.run import run_sft
    from xr_nemo.training.metrics import read_metrics

    data = _samples_file(workdir / "samples.jsonl", long_tailed_lengths(256, 40, 1000, seed=1))
    common = [
        f"data.train={data}",
        f"model.hf_dir={workdir / 'tiny_model'}",
        f"data.cache_dir={workdir / 'cache'}",
        f"trainer.max_steps={steps}",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
        "trainer.progress=false",
    ]
    variants = {
        "packed (1 × 1024 per micro-batch)": ["data.packing=true", "trainer.global_batch_size=4"],
        "unpacked (4 padded to longest)": [
            "data.packing=false",
            "trainer.micro_batch_size=4",
            "trainer.global_batch_size=16",
        ],
    }
    results = {}
    for name, overrides in variants.items():
        run_dir = workdir / name.split()[0]
        run_sft(apply_overrides(load_recipe("tiny_cpu", "sft"), [*common, f"run.dir={run_dir}", *overrides]))
        rows = read_metrics(run_dir)[1:]  # the first step warms up
        results[name] = (
            statistics.median(r["tokens_per_s"] for r in rows),
            statistics.mean(r["padding_fraction"] for r in rows),
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    lengths = long_tailed_lengths(20000, 200, 16384)
    packed, padded = padding_shares(lengths, 16384, 4)
    print(
        f"lengths: n={len(lengths)} median={int(np.median(lengths))} p99={int(np.percentile(lengths, 99))} "
        f"max={max(lengths)}"
    )
    print(
        f"padding share  packed (BFD, 16,384): {packed:.2%}   pad-to-longest (micro 4): {padded:.2%}   "
        f"ratio {padded / packed:.1f}×"
    )

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="packing-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = step_throughput(workdir, args.steps)
    for name, (tokens_per_s, padding) in results.items():
        print(f"tiny SFT step {name}: {tokens_per_s:,.0f} real tokens/s, padding {padding:.1%}")
    (packed_speed, _), (unpacked_speed, _) = results.values()
    print(f"throughput packed / unpacked: {packed_speed / unpacked_speed:.2f}×")


if __name__ == "__main__":
    main()
