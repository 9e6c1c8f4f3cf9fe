"""Checks (a), (b) and (c) of `gpu_check.py`: TE against local logits, packed (THD) against one-by-one
losses, and whether SFT steps learn in bf16 (and FP8). Their criteria are in `gpu_check.py`'s
docstring; each returns (passed, one-line summary, metrics)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from gpu_check_models import (
    build,
    device,
    for_training,
    hf_config,
    load_weights,
    random_tokens,
    relative_error,
    release_memory,
    text_batch,
    train_step,
)
from gpu_check_runner import record_partial

Outcome = tuple[bool, str, dict[str, Any]]
LOGITS_TOLERANCE = 0.03
PACKED_MEAN_TOLERANCE, PACKED_SUM_TOLERANCE = 0.01, 1e-3
# (c): bf16 against an fp32 run from the same weights on the same batches, FP8 against bf16 (relative
# difference of the mean loss over the last WINDOW steps), and every run's last-WINDOW mean at most
# LEARNED × its first-WINDOW mean.
BF16_LOSS_TOLERANCE, FP8_LOSS_TOLERANCE, LEARNED, WINDOW = 0.02, 0.03, 0.95, 10
# Adam moves each weight by about the learning rate per step, so a narrow model's logits move more
# slowly: the tiny shape (hidden 128) takes a larger rate to learn in the few steps a CPU test affords.
LEARNING_LR = {"1.5b": 1e-4, "tiny": 1e-3}


def check_logits(args) -> Outcome:
    import torch

    metrics, passed = {}, True
    for shape, length in (("tiny", 1024), ("1.5b", 2048)):
        hf = hf_config(shape)
        batch = text_batch(random_tokens(hf, 1, length + 1))
        inputs = (batch["tokens"], batch["position_ids"], None)
        with torch.no_grad():
            reference = build(hf, "local", torch.float32).eval()
            fp32 = reference(*inputs)
            local = build(hf, "local").eval()
            load_weights(local, reference.state_dict())
            del reference
            te = build(hf, "transformer_engine").eval()
            difference = _through_checkpoint(local, te, Path(tempfile.mkdtemp(dir=args.workdir)))
            local_logits, te_logits = local(*inputs), te(*inputs)
        result = {
            "checkpoint_keys_only_in_one": difference,
            "te_vs_local": relative_error(te_logits, local_logits),
            "local_vs_fp32": relative_error(local_logits, fp32),
            "te_vs_fp32": relative_error(te_logits, fp32),
        }
        passed &= not difference and result["te_vs_local"] <= LOGITS_TOLERANCE
        passed &= result["te_vs_fp32"] <= 1.5 * result["local_vs_fp32"] + 1e-3
        metrics[shape] = result
        record_partial(**{shape: result})
        del local, te
        release_memory()
    summary = "; ".join(
        f"{shape}: TE vs local {m['te_vs_local']:.2%}, vs fp32 {m['te_vs_fp32']:.2%} "
        f"(local {m['local_vs_fp32']:.2%})"
        for shape, m in metrics.items()
    )
    return passed, summary, metrics


def _through_checkpoint(source, target, directory: Path) -> list[str]:
    """Save `source` as a torch_dist checkpoint and load it into `target`; the checkpoint keys that only
    one of the two declares (none expected)."""
    from megatron.core import dist_checkpointing

    from xr_nemo.conversion.dist_checkpoint import load_model_weights

    def keys(model) -> set[str]:
        return {entry.key for entry in model.sharded_state_dict().values()}

    dist_checkpointing.save(source.sharded_state_dict(), str(directory))
    load_model_weights(target, directory)
    return sorted(keys(source) ^ keys(target))


def check_packed(args) -> Outcome:
    import torch
    from megatron.core.packed_seq_params import PackedSeqParams

    from xr_nemo.models.specs import packed_seq_params_for

    lengths, width = [700, 1200, 124], 2048
    metrics, passed = {}, True
    for shape in ("tiny", "1.5b"):
        hf = hf_config(shape)
        model = build(hf, "transformer_engine").eval()
        samples = [text_batch(random_tokens(hf, 1, n + 1, seed=i)) for i, n in enumerate(lengths)]
        padding = width - sum(lengths)
        pad = torch.zeros(1, padding, dtype=torch.long, device=device())
        row = {key: torch.cat([s[key] for s in samples] + [pad], -1) for key in ("tokens", "labels")}
        positions = [s["position_ids"] for s in samples]
        positions.append(torch.arange(padding, device=device()).expand(3, 1, padding))
        bounds = [0, *torch.tensor(lengths).cumsum(0).tolist(), width]
        bounds = torch.tensor(bounds, dtype=torch.int32, device=device())
        params = PackedSeqParams(
            cu_seqlens_q=bounds, cu_seqlens_kv=bounds, max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths)
        )
        with torch.no_grad():
            alone = torch.cat(
                [model(s["tokens"], s["position_ids"], None, labels=s["labels"]) for s in samples], -1
            )
            packed = model(
                row["tokens"],
                torch.cat(positions, -1),
                None,
                labels=row["labels"],
                packed_seq_params=packed_seq_params_for(model.config, params, 1, width),
            )[:, : sum(lengths)]
        mean = (packed - alone).abs().mean().item()
        sums = abs(packed.sum().item() - alone.sum().item()) / alone.sum().item()
        metrics[shape] = {"mean_abs_difference": mean, "sum_relative_difference": sums}
        record_partial(**{shape: metrics[shape]})
        passed &= mean <= PACKED_MEAN_TOLERANCE and sums <= PACKED_SUM_TOLERANCE
        del model
        release_memory()
    summary = "; ".join(
        f"{shape}: mean |Δ| {m['mean_abs_difference']:.4f}, sums {m['sum_relative_difference']:.2e}"
        for shape, m in metrics.items()
    )
    return passed, summary, metrics


# ── (c) learning ─────────────────────────────────────────────────────────────────────────────────────


def repeated_blocks(hf, steps: int, batch: int, length: int) -> list[dict]:
    """A learnable stream: blocks of 64 tokens from 2,048 ids (an eighth of a smaller vocabulary), each
    repeated through its row. A model learns first that only those ids occur, then to copy the block."""
    ids = min(2048, hf.text_config.vocab_size // 8)
    batches = []
    for step in range(steps):
        block = random_tokens(hf, batch, 64, seed=1000 + step, vocab=ids)
        batches.append(text_batch(block.repeat(1, length // 64 + 1)[:, : length + 1]))
    return batches


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def judge_learning(losses: dict[str, list[float]]) -> tuple[bool, list[str], dict[str, Any]]:
    """(c)'s criterion on the loss curves of `fp32`, `bf16` and maybe `fp8`, taken from the same weights
    on the same batches: all finite; each run's mean over the last WINDOW steps at most LEARNED × its
    mean over the first WINDOW (it learned); bf16's last-WINDOW mean within BF16_LOSS_TOLERANCE of
    fp32's, FP8's within FP8_LOSS_TOLERANCE of bf16's. Returns (passed, what failed, numbers)."""
    failures: list[str] = []
    window = WINDOW
    if min(map(len, losses.values())) < 2 * window:
        raise ValueError(f"(c) needs at least {2 * window} steps per run (--steps)")
    numbers: dict[str, Any] = {"first_mean": {}, "last_mean": {}, "ratio": {}}
    for name, values in losses.items():
        if not all(math.isfinite(value) for value in values):
            failures.append(f"{name} loss is not finite")
            continue
        first, last = _mean(values[:window]), _mean(values[-window:])
        numbers["first_mean"][name], numbers["last_mean"][name] = first, last
        numbers["ratio"][name] = last / first
        if last > LEARNED * first:
            failures.append(f"{name} did not learn (last/first {last / first:.3f} > {LEARNED})")
    tail = numbers["last_mean"]
    for ours, reference, tolerance in (
        ("bf16", "fp32", BF16_LOSS_TOLERANCE),
        ("fp8", "bf16", FP8_LOSS_TOLERANCE),
    ):
        if ours in tail and reference in tail:
            gap = abs(tail[ours] - tail[reference]) / tail[reference]
            numbers[f"{ours}_vs_{reference}"] = gap
            if gap > tolerance:
                failures.append(f"{ours} {gap:.2%} from {reference} (> {tolerance:.0%})")
    return not failures, failures, numbers


def check_learning(args) -> Outcome:
    """(c): fp32 reference, bf16 and (with TE) FP8 SFT runs of `args.shape` from the same weights."""
    import torch
    from gpu_check_env import installed

    impl = "transformer_engine" if installed("transformer-engine") and not args.portable else "local"
    torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 reference: fp32 weights, TF32 matmuls
    hf = hf_config(args.shape)
    batches = repeated_blocks(hf, args.steps, args.micro_batch, args.learning_seq_length)
    initial = {
        key: value.cpu() for key, value in build(hf, impl).state_dict().items() if torch.is_tensor(value)
    }
    runs: dict[str, dict[str, Any]] = {"fp32": dict(dtype=torch.float32), "bf16": {}}
    if impl == "transformer_engine":
        runs["fp8"] = dict(fp8="hybrid", fp8_recipe=args.fp8_recipe)
    losses: dict[str, list[float]] = {}
    for name, settings in runs.items():
        model = build(hf, impl, **settings)
        load_weights(model, initial)
        dtype = "float32" if name == "fp32" else "bfloat16"
        wrapped, optimizer = for_training(model, LEARNING_LR[args.shape], dtype)
        losses[name] = [train_step(wrapped, optimizer, batch) for batch in batches]
        record_partial(losses=losses)
        del model, wrapped, optimizer
        release_memory()
    passed, failures, numbers = judge_learning(losses)
    ratios = ", ".join(f"{name} {ratio:.2f}×" for name, ratio in numbers["ratio"].items())
    gaps = ", ".join(
        f"{key} {value:.2%}" for key, value in numbers.items() if key.endswith(("_fp32", "_bf16"))
    )
    summary = f"{impl} layers; last/first-{WINDOW} mean: {ratios}; {gaps}"
    if failures:
        summary += "; " + "; ".join(failures)
    metrics = {"transformer_impl": impl, "lr": LEARNING_LR[args.shape], "losses": losses, **numbers}
    if impl == "local":
        metrics["fp8"] = "skipped: needs transformer-engine layers"
    return passed, summary, metrics
