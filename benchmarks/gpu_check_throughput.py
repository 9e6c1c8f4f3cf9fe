"""Check (d) of `gpu_check.py` and the matmul peak it is measured against.

`matmul_peak`: the best TFLOP/s of a bf16 [n × n] @ [n × n] GEMM (n = 8192), five rounds of 20
products, each round timed between device synchronisations — what this GPU, clocks and driver reach
on the ideal kernel; MFU against it says how far the training step is from the GPU's real ceiling,
MFU against the spec sheet's dense bf16 peak (989 TFLOP/s on an H100 SXM / H200) is the number other
reports quote. Both are recorded.

`sft_throughput`: tokens/s, both MFUs and peak device memory of SFT steps of one shape, each run on
the same tokens: unpacked (micro-batch of `--micro-batch` rows of `--seq-length` tokens) and packed
(as SFT trains: rows of samples of log-normal lengths, one row per micro-batch, boundaries as
`PackedSeqParams` from `xr_nemo.data.packing.collate`, THD on Transformer Engine). Runs: TE bf16
(packed and unpacked), TE FP8, the local layers (packed and unpacked), Transformers + sdpa (unpacked:
Transformers packs only through flash-attention-2's varlen kernels). A packed run counts real tokens
only, and FLOPs from each sample's own causal attention.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gpu_check_models import (
    SPECIAL_TOKENS,
    build,
    device,
    for_training,
    hf_config,
    on_gpu,
    peak_memory_gib,
    random_tokens,
    release_memory,
    reset_peak_memory,
    synchronize,
    text_batch,
    time_per_step,
    to_device,
    train_step,
)
from gpu_check_runner import record_partial

Outcome = tuple[bool, str, dict[str, Any]]
# Dense bf16 TFLOP/s of the spec sheets (longest name matched first); --peak-tflops for others.
SPEC_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0}
TARGETS = {"te_bf16_packed_mfu_of_measured_peak": 0.35, "te_bf16_over_transformers": 1.3}
TARGETS["fp8_over_te_bf16"] = 1.3
MATMUL_ROUNDS, MATMUL_PRODUCTS = 5, 20
PACKED_MEDIAN_FRACTION = 0.25  # packed samples' median length, as a fraction of the row


def spec_peak_tflops(device_name: str) -> float | None:
    """The spec sheet's dense bf16 peak of a GPU as torch names it ("NVIDIA H100 80GB HBM3"), or None."""
    for name in sorted(SPEC_PEAK_BF16_TFLOPS, key=len, reverse=True):
        if all(part in device_name for part in name.split()):
            return SPEC_PEAK_BF16_TFLOPS[name]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: the model's training FLOPs per second over a peak in TFLOP/s."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12) if peak_tflops else None


def matmul_tflops(size: int, products: int, seconds: float) -> float:
    """TFLOP/s of `products` [size × size] @ [size × size] products in `seconds` (2 n³ FLOPs each)."""
    return 2 * size**3 * products / seconds / 1e12


def sft_flops_per_token(hf, seq_length: int) -> float:
    """Training FLOPs per token on whole causal sequences of `seq_length` tokens: each token attends to
    (s + 1) / 2 keys on average (`xr-nemo plan`'s formula, checked against PyTorch's FLOP counter)."""
    from xr_nemo.planning import training_flops_per_token

    return training_flops_per_token(hf, (seq_length + 1) / 2)


def packed_flops_per_token(hf, lengths: list[int]) -> float:
    """The same over packed samples of `lengths` tokens: a token attends only inside its sample, so the
    mean number of keys is Σ s (s + 1) / 2 over Σ s."""
    from xr_nemo.planning import training_flops_per_token

    keys = sum(s * (s + 1) / 2 for s in lengths) / sum(lengths)
    return training_flops_per_token(hf, keys)


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if on_gpu() else "cpu"


def check_matmul_peak(args) -> Outcome:
    """The best TFLOP/s of MATMUL_ROUNDS rounds of MATMUL_PRODUCTS bf16 GEMMs of `args.matmul_size`."""
    import torch

    size = args.matmul_size
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device(), torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    rounds = []
    for _ in range(MATMUL_ROUNDS):
        synchronize()
        start = time.perf_counter()
        for _ in range(MATMUL_PRODUCTS):
            a @ b
        synchronize()
        rounds.append(matmul_tflops(size, MATMUL_PRODUCTS, time.perf_counter() - start))
    measured, spec = max(rounds), args.peak_tflops or spec_peak_tflops(_device_name())
    metrics = {"size": size, "rounds_tflops": rounds, "measured_tflops": measured, "spec_tflops": spec}
    # a measurement above the spec sheet means the timing is wrong (work not waited for)
    passed = measured > 0 and (spec is None or measured <= 1.05 * spec)
    share = f" = {measured / spec:.0%} of the spec sheet's {spec:g}" if spec else ""
    return passed, f"{measured:,.4g} TFLOP/s bf16 ({size}³){share}", metrics


def measured_peak(args) -> float:
    """The peak measured earlier in this run (passed on by the parent), or measured now."""
    if args.measured_peak_tflops:
        return args.measured_peak_tflops
    return check_matmul_peak(args)[2]["measured_tflops"]


# ── batches and steps ────────────────────────────────────────────────────────────────────────────────


def packed_rows(hf, rows: int, width: int, seed: int = 0) -> tuple[list[dict], list[list[int]]]:
    """`rows` packed rows of `width` positions, one micro-batch each, from samples of log-normal lengths
    (median a quarter row) packed best-fit decreasing, the fullest rows kept; and each row's samples'
    lengths (positions)."""
    import numpy as np

    from xr_nemo.data.packing import best_fit_decreasing, collate

    rng = np.random.default_rng(seed)
    spans = np.clip(rng.lognormal(math.log(PACKED_MEDIAN_FRACTION * width), 0.8, 16 * rows), 16, width)
    spans = [int(s) for s in spans]
    bins = sorted(best_fit_decreasing(spans, width), key=lambda b: -sum(spans[i] for i in b))[:rows]
    high = hf.text_config.vocab_size - len(SPECIAL_TOKENS)
    pad_id = hf.text_config.vocab_size - 1
    microbatches, lengths = [], []
    for members in bins:
        samples = [(rng.integers(0, high, spans[i] + 1), np.ones(spans[i] + 1)) for i in members]
        batch = collate([samples], pad_id, length=width)
        microbatches.append(
            to_device({k: v for k, v in batch.items() if k not in ("num_samples", "real_tokens")})
        )
        lengths.append([spans[i] for i in members])
    return microbatches, lengths


def _megatron_step(hf, batch: dict | list[dict], impl: str, **settings) -> Callable[[], Any]:
    wrapped, optimizer = for_training(build(hf, impl, **settings), lr=1e-5)
    return partial(train_step, wrapped, optimizer, batch)


def _transformers_step(hf, batch: dict) -> Callable[[], Any]:
    """Transformers' Qwen2.5-VL with sdpa attention, bf16, fused AdamW on the GPU, on the same tokens."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device(device()):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            hf, attn_implementation="sdpa", dtype=torch.bfloat16
        )
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=on_gpu())
    tokens = batch["tokens"]  # Transformers shifts the labels itself

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _runs(args, hf, with_te: bool) -> tuple[dict[str, Callable[[], Callable[[], Any]]], dict[str, dict]]:
    """The runs to time (name → how to make its step) and each run's tokens and FLOPs per step."""
    unpacked = text_batch(random_tokens(hf, args.micro_batch, args.seq_length + 1))
    packed, lengths = packed_rows(hf, args.micro_batch, args.seq_length)
    real = sum(map(sum, lengths))
    shapes = {
        "unpacked": {
            "tokens": args.micro_batch * args.seq_length,
            "flops": sft_flops_per_token(hf, args.seq_length),
        },
        "packed": {
            "tokens": real,
            "flops": packed_flops_per_token(hf, [s for row in lengths for s in row]),
            "samples": sum(map(len, lengths)),
            "padding_fraction": 1 - real / (args.micro_batch * args.seq_length),
        },
    }
    runs: dict[str, Callable[[], Callable[[], Any]]] = {}
    if with_te:
        runs["te_bf16_packed"] = partial(_megatron_step, hf, packed, "transformer_engine")
        runs["te_bf16"] = partial(_megatron_step, hf, unpacked, "transformer_engine")
        fp8 = dict(fp8="hybrid", fp8_recipe=args.fp8_recipe)
        runs["te_fp8"] = partial(_megatron_step, hf, unpacked, "transformer_engine", **fp8)
    runs["local_packed"] = partial(_megatron_step, hf, packed, "local")
    runs["local"] = partial(_megatron_step, hf, unpacked, "local")
    runs["transformers_sdpa"] = partial(_transformers_step, hf, unpacked)
    return runs, shapes


def _time_run(make_step: Callable[[], Callable[[], Any]], args, tokens: int, flops: float, peaks) -> dict:
    reset_peak_memory()
    seconds = time_per_step(make_step(), args.timed_steps)
    rate = tokens / seconds
    return {
        "tokens_per_s": rate,
        "step_s": seconds,
        "mfu_of_spec_peak": mfu(rate, flops, peaks["spec"]),
        "mfu_of_measured_peak": mfu(rate, flops, peaks["measured"]),
        "peak_memory_gib": peak_memory_gib(),
    }


def _ratio(ours: dict, reference: dict) -> float | None:
    a, b = ours.get("tokens_per_s"), reference.get("tokens_per_s")
    return a / b if a and b else None


def check_throughput(args) -> Outcome:
    """(d); with TE its targets decide, without it (portable) every run measured is a pass."""
    import traceback

    from gpu_check_env import installed

    with_te = installed("transformer-engine") and not args.portable and on_gpu()
    hf = hf_config(args.shape)
    peaks = {"spec": args.peak_tflops or spec_peak_tflops(_device_name()), "measured": measured_peak(args)}
    runs, shapes = _runs(args, hf, with_te)
    metrics: dict[str, Any] = {"shape": args.shape, "peak_tflops": peaks, "batches": shapes}
    if not with_te:
        metrics["te_bf16"] = metrics["te_bf16_packed"] = metrics["te_fp8"] = {
            "skipped": "transformer-engine is not installed, or --portable / --device cpu"
        }
    for name, make_step in runs.items():
        kind = shapes["packed" if name.endswith("_packed") else "unpacked"]
        try:
            metrics[name] = _time_run(make_step, args, kind["tokens"], kind["flops"], peaks)
        except Exception:
            metrics[name] = {"error": traceback.format_exc()}
        record_partial(**{name: metrics[name]})
        release_memory()
    return _judge(metrics, list(runs), with_te)


def _judge(metrics: dict[str, Any], names: list[str], with_te: bool) -> Outcome:
    speed = {name: metrics[name] for name in names}
    errors = [name for name, run in speed.items() if "error" in run]
    summary = ", ".join(
        f"{name} {run['tokens_per_s']:,.0f} tok/s" + _mfu_text(run) if "error" not in run else f"{name} error"
        for name, run in speed.items()
    )
    if not with_te:
        return not errors, summary + " (no target without TE)", metrics
    ratios = {
        "te_bf16_over_transformers": _ratio(speed["te_bf16"], speed["transformers_sdpa"]),
        "fp8_over_te_bf16": _ratio(speed["te_fp8"], speed["te_bf16"]),
    }
    metrics["ratios"] = ratios
    te_mfu = speed["te_bf16_packed"].get("mfu_of_measured_peak")
    passed = te_mfu is not None and te_mfu >= TARGETS["te_bf16_packed_mfu_of_measured_peak"]
    passed &= all(value is not None and value >= TARGETS[key] for key, value in ratios.items())
    summary += "; " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items() if v is not None)
    return passed and not errors, summary, metrics


def _mfu_text(run: dict) -> str:
    measured, spec = run.get("mfu_of_measured_peak"), run.get("mfu_of_spec_peak")
    parts = [f"{measured:.1%} of measured" if measured else "", f"{spec:.1%} of spec" if spec else ""]
    parts = [part for part in parts if part]
    return f" (MFU {', '.join(parts)})" if parts else ""
