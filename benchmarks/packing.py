"""Packing vs pad-to-longest batching, side by side.

1. Padding share of the computed tokens on a long-tailed length distribution like OpenThoughts-114k's
   (log-normal, a few hundred to 16k tokens): best-fit-decreasing packing into 16,384-token sequences vs
   shuffled micro-batches of 4 padded to their longest sample.
2. Real (non-padding) tokens per second of the tiny SFT step, packed vs unpacked, through `run_sft` on
   the same long-tailed samples.
3. Peak memory and time of one SFT forward and backward pass of the tiny Qwen2.5-VL on one packed
   sequence of 16,384 tokens (long-tailed samples in drawn order, the last one cut), each in a fresh
   process: attention from the samples' boundaries (what training runs) vs megatron-core's
   `DotProductAttention` with the dense block-diagonal [seq × seq] mask, built here, that packing used
   to need. Peak is the rise of the process's peak RSS over its resident memory before the step
   (Linux: `/proc/self`).

Usage: python benchmarks/packing.py [--workdir DIR] [--steps N] [--packed-tokens N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xr_nemo.data.packing import best_fit_decreasing
from xr_nemo.distributed.local_launch import run_distributed


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


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _dense_attention(model) -> None:
    """megatron-core's `DotProductAttention` in every layer of `model`: attention through a dense mask."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    for layer in model.language_model.decoder.layers:
        attention = layer.self_attention
        attention.core_attention = DotProductAttention(
            model.config, attention.layer_number, AttnMaskType.causal, "self"
        )


def _block_diagonal_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[1, 1, seq, seq], True = masked: causal and inside each segment."""
    segment = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), cu_seqlens.diff())
    causal = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
    return ((segment[:, None] != segment[None, :]) | causal)[None, None]


def packed_step_worker(hf_dir: str, lengths: list[int], dense: bool) -> dict[str, float]:
    """Peak RSS rise (MiB) and seconds of one forward and backward pass on one sequence packing
    samples of `lengths` positions."""
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.data.packing import collate
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    initialize(ParallelConfig(), seed=0)
    torch.manual_seed(0)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = Qwen25VLModel(hf_config)
    rng = np.random.default_rng(0)
    vocab = hf_config.text_config.vocab_size
    samples = [(rng.integers(0, vocab, length + 1), np.ones(length + 1)) for length in lengths]
    batch = collate([samples], pad_id=0)
    params, mask = batch["packed_seq_params"], None
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    if dense:  # the mask counts: it is the memory packing needed
        _dense_attention(model)
        mask, params = _block_diagonal_mask(params.cu_seqlens_q, batch["tokens"].shape[1]), None
    start = time.perf_counter()
    loss = model(
        batch["tokens"], batch["position_ids"], mask, labels=batch["labels"], packed_seq_params=params
    )
    (loss * batch["loss_mask"]).sum().backward()
    seconds = time.perf_counter() - start
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    shutdown()
    return {"seconds": seconds, "peak_mib": peak_mib}


def packed_step_memory(
    workdir: Path, tokens: int, layers: int
) -> tuple[list[int], dict[str, dict[str, float]]]:
    """The sample lengths of one packed sequence of `tokens` positions, and per attention path the
    worker's measurement on the tiny model with `layers` layers."""
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    spec = TinyQwen25VLSpec(num_layers=layers)
    hf_dir = str(build_tiny_qwen25_vl(workdir / f"tiny_model_{layers}_layers", spec))
    chosen: list[int] = []
    for length in long_tailed_lengths(100, 200, tokens, seed=2):  # in drawn order, the last one cut
        chosen.append(min(length, tokens - sum(chosen)))
        if sum(chosen) == tokens:
            break
    paths = {"segments (packed_seq_params)": False, "dense mask (DotProductAttention)": True}
    return chosen, {
        name: run_distributed(packed_step_worker, 1, hf_dir, chosen, dense)[0]
        for name, dense in paths.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--packed-tokens", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=1, help="of the model of the packed step")
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

    lengths, steps = packed_step_memory(workdir, args.packed_tokens, args.layers)
    print(
        f"one SFT forward + backward, tiny model with {args.layers} layer(s), {args.packed_tokens:,} tokens "
        f"packing {len(lengths)} samples (longest {max(lengths):,}), fresh process each:"
    )
    for name, result in steps.items():
        print(f"  {name:<34} peak +{result['peak_mib']:8,.0f} MiB  {result['seconds']:7.2f} s")
    segments, dense = steps.values()
    print(
        f"segments / dense mask: memory {segments['peak_mib'] / dense['peak_mib']:.3f}×, "
        f"time {segments['seconds'] / dense['seconds']:.2f}×"
    )


if __name__ == "__main__":
    main()
