"""The GPU path, checked and measured in one command, on one H100/H200 in under ten minutes:

    pip install -e '.[gpu]'
    python benchmarks/gpu_check.py --out gpu_check.json

Every check runs on its own: one that fails or raises is recorded with its error and the others still
run. It prints a table (each result beside its target) and writes everything to the JSON file, after
every check, so a run cut short keeps what it measured. Models have random weights.

(a) te_vs_local_logits: the local model writes a checkpoint, the Transformer Engine model loads it
    (their checkpoint keys must be equal), and both give the same bf16 logits, on the tiny shape and a
    Qwen2.5-1.5B-shaped Qwen2.5-VL: within 3 % (relative L2) of each other, and TE no further from the
    fp32 logits than 1.5 × the local bf16 ones are.
(b) thd_packed_loss: three sequences packed in one row reach TE as THD (`packed_seq_params`) and give
    the per-token losses of the three run one by one: mean difference ≤ 0.01, sums within 0.1 %.
(c) fp8_vs_bf16_loss: SFT steps of the 1.5B shape on a learnable synthetic task (blocks of a small
    vocabulary, repeated) from the same weights, FP8 against bf16: the mean loss of the last ten steps
    within 3 %, and both fall below 80 % of the first.
(d) sft_throughput: tokens/s and MFU of SFT steps of the 1.5B shape on the same tokens: TE bf16, TE
    FP8, the local layers, and Transformers + sdpa. Targets: TE bf16 MFU ≥ 45 % and ≥ 1.3 ×
    Transformers; FP8 ≥ 1.3 × TE bf16. MFU counts the model's training FLOPs (`xr-nemo plan`'s
    formula) against the GPU's dense bf16 peak, for the FP8 run too.
(e) grpo_colocated_vllm: one GRPO step with an in-process vLLM engine (`gpu_check_grpo.py`).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

# Dense bf16 TFLOP/s of the GPUs this check is meant for (longest name matched first); --peak-tflops
# for others.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0}
TARGETS = {"te_bf16_mfu": 0.45, "te_bf16_over_transformers": 1.3, "fp8_over_te_bf16": 1.3}
LOGITS_TOLERANCE = 0.03
PACKED_MEAN_TOLERANCE, PACKED_SUM_TOLERANCE = 0.01, 1e-3
FP8_LOSS_TOLERANCE = 0.03
TARGET_TEXT = {
    "te_vs_local_logits": f"keys equal; TE vs local ≤ {LOGITS_TOLERANCE:.0%}",
    "thd_packed_loss": f"mean |Δ| ≤ {PACKED_MEAN_TOLERANCE}, sums within {PACKED_SUM_TOLERANCE:.1%}",
    "fp8_vs_bf16_loss": f"last-10 mean within {FP8_LOSS_TOLERANCE:.0%}",
    "sft_throughput": "TE bf16 MFU ≥ 45 %, ≥ 1.3× HF sdpa; FP8 ≥ 1.3× bf16",
    "grpo_colocated_vllm": "logprobs after refit: mean |Δ| ≤ 0.02; sleep frees memory",
}
CHECKS = tuple(TARGET_TEXT)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {},  # TinyQwen25VLSpec's defaults: 2 layers, hidden 128, 2 heads of 64
    "1.5b": dict(  # Qwen2.5-1.5B's language model
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
}
VOCAB_SIZES = {"tiny": 512, "1.5b": 151_936}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>")
SPECIAL_TOKENS += ("<|vision_end|>",)
GIB = 1024**3


@dataclass
class CheckResult:
    name: str
    status: str  # pass | fail | error
    seconds: float = 0.0
    summary: str = ""
    target: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


Outcome = tuple[bool, str, dict[str, Any]]  # passed, one-line summary, metrics


# ── pure helpers ─────────────────────────────────────────────────────────────────────────────────────


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU as torch names it ("NVIDIA H100 80GB HBM3"), or None if unknown."""
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if all(part in device_name for part in name.split()):
            return PEAK_BF16_TFLOPS[name]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: the model's training FLOPs per second over the peak (in TFLOP/s)."""
    return tokens_per_s * flops_per_token / (peak * 1e12)


def sft_flops_per_token(hf_config, seq_length: int) -> float:
    """Training FLOPs per token on whole causal sequences of `seq_length` tokens: each token attends to
    (s + 1) / 2 keys on average (`xr-nemo plan`'s formula, checked against PyTorch's FLOP counter)."""
    from xr_nemo.planning import training_flops_per_token

    return training_flops_per_token(hf_config, (seq_length + 1) / 2)


def format_table(results: list[CheckResult]) -> str:
    """One row per check: status, result (or the error's last line), target, seconds."""
    rows = [("check", "status", "result", "target", "s")]
    for result in results:
        shown = result.summary if result.error is None else result.error.strip().splitlines()[-1]
        rows.append((result.name, result.status, shown, result.target, f"{result.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument(
        "--checks", type=_check_names, default=list(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}"
    )
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: by name)")
    parser.add_argument("--seq-length", type=int, default=4096, help="(d): tokens per sequence")
    parser.add_argument("--micro-batch", type=int, default=2, help="(c), (d): sequences per step")
    parser.add_argument("--steps", type=int, default=50, help="(c): SFT steps per precision")
    parser.add_argument("--timed-steps", type=int, default=10, help="(d): steps timed after 3 warm-up steps")
    parser.add_argument(
        "--fp8-recipe", choices=["delayed", "tensorwise", "blockwise", "mxfp8"], default="delayed"
    )
    parser.add_argument("--grpo-shape", choices=list(SHAPES), default="1.5b", help="(e): model layers")
    parser.add_argument("--sleep-level", type=int, choices=[1, 2], default=1, help="(e): vLLM's sleep level")
    parser.add_argument(
        "--workdir", type=Path, help="for checkpoints and the (e) model (default: a temp dir)"
    )
    return parser.parse_args(argv)


def _check_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown check(s) {unknown or text!r}; choose from {', '.join(CHECKS)}"
        )
    return names


# ── models and batches ───────────────────────────────────────────────────────────────────────────────


def hf_config(shape: str):
    """A Qwen2.5-VL config of `shape` (the tiny vision tower), special tokens at the vocabulary's end."""
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, tiny_config

    vocab = VOCAB_SIZES[shape]
    ids = {token: vocab - 1 - i for i, token in enumerate(SPECIAL_TOKENS)}
    return tiny_config(TinyQwen25VLSpec(**SHAPES[shape]), vocab, ids)


def build(hf, impl: str, dtype=None, **settings):
    """Qwen25VLModel on the GPU with `impl` layers (bf16 unless `dtype`); settings as LayerSettings'."""
    import torch

    from xr_nemo.models.layer_settings import LayerSettings
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    layers = LayerSettings(impl, **settings)
    return Qwen25VLModel(hf, params_dtype=dtype or torch.bfloat16, layers=layers).cuda()


def load_weights(model, state: dict) -> None:
    """`state` (another model's, maybe another dtype) into `model`; only TE's FP8 metadata may differ."""
    import torch

    dtype = next(model.parameters()).dtype
    weights = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in state.items()
        if torch.is_tensor(value) and not key.endswith("_extra_state")
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(key.endswith("_extra_state") for key in missing), (missing, unexpected)


def text_batch(tokens, loss_mask=None) -> dict:
    """Next-token inputs, labels, loss mask and text mrope positions of [batch, length + 1] tokens."""
    import torch

    batch, length = tokens.shape[0], tokens.shape[1] - 1
    positions = torch.arange(length, device=tokens.device).expand(3, batch, length)
    mask = torch.ones(batch, length, device=tokens.device) if loss_mask is None else loss_mask
    return dict(tokens=tokens[:, :-1], labels=tokens[:, 1:], loss_mask=mask, position_ids=positions)


def random_tokens(hf, batch: int, length: int, seed: int = 0, vocab: int | None = None):
    import torch

    high = vocab or hf.text_config.vocab_size - len(SPECIAL_TOKENS)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, length), generator=generator).cuda()


def _loss(loss_mask, per_token_loss) -> tuple:
    import torch

    total = (per_token_loss.float() * loss_mask).sum()
    count = loss_mask.sum().to(torch.int)
    return total, count, {"loss": torch.stack([total.detach(), count.float()])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    per_token = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return per_token, partial(_loss, batch["loss_mask"])


def train_step(wrapped, optimizer, batch: dict) -> float:
    """One optimizer step through megatron-core's schedule, as SFT takes it; the mean token loss."""
    from xr_nemo.training.loop import run_schedule

    wrapped.zero_grad_buffer()
    optimizer.zero_grad()
    (report,) = run_schedule(_forward_step, wrapped, [batch], forward_only=False)
    optimizer.step()
    total, count = report["loss"]
    return (total / count).item()


def for_training(model, lr: float):
    """`model` wrapped as training wraps it (DDP, bf16 with fp32 master weights in Adam)."""
    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.training.setup import wrap_for_training

    config = SFTConfig()
    config.model.dtype, config.optim.lr = "bfloat16", lr
    return wrap_for_training(model, config)


def relative_error(ours, reference) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


# ── the checks ───────────────────────────────────────────────────────────────────────────────────────


def check_logits(args: argparse.Namespace) -> Outcome:
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


def check_packed(args: argparse.Namespace) -> Outcome:
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
        pad = torch.zeros(1, padding, dtype=torch.long).cuda()
        row = {key: torch.cat([s[key] for s in samples] + [pad], -1) for key in ("tokens", "labels")}
        positions = [s["position_ids"] for s in samples] + [
            torch.arange(padding).cuda().expand(3, 1, padding)
        ]
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist(), width], dtype=torch.int32).cuda()
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
        passed &= mean <= PACKED_MEAN_TOLERANCE and sums <= PACKED_SUM_TOLERANCE
    summary = "; ".join(
        f"{shape}: mean |Δ| {m['mean_abs_difference']:.4f}, sums {m['sum_relative_difference']:.2e}"
        for shape, m in metrics.items()
    )
    return passed, summary, metrics


def _repeated_blocks(hf, steps: int, batch: int, length: int) -> list[dict]:
    """A learnable stream: blocks of 64 tokens from 2,048 ids, each repeated through its row."""
    batches = []
    for step in range(steps):
        block = random_tokens(hf, batch, 64, seed=1000 + step, vocab=min(2048, hf.text_config.vocab_size))
        batches.append(text_batch(block.repeat(1, length // 64 + 1)[:, : length + 1]))
    return batches


def check_fp8(args: argparse.Namespace) -> Outcome:
    import torch

    hf = hf_config("1.5b")
    batches = _repeated_blocks(hf, args.steps, args.micro_batch, 2048)
    state = build(hf, "transformer_engine").state_dict()
    initial = {key: value.cpu() for key, value in state.items() if torch.is_tensor(value)}
    del state
    losses = {}
    for name, settings in (("bf16", {}), ("fp8", dict(fp8="hybrid", fp8_recipe=args.fp8_recipe))):
        model = build(hf, "transformer_engine", **settings)
        load_weights(model, initial)
        wrapped, optimizer = for_training(model, lr=1e-4)
        losses[name] = [train_step(wrapped, optimizer, batch) for batch in batches]
        del model, wrapped, optimizer
        gc.collect()
    tail = {name: sum(values[-10:]) / len(values[-10:]) for name, values in losses.items()}
    gap = abs(tail["fp8"] - tail["bf16"]) / tail["bf16"]
    fell = all(values[-1] < 0.8 * values[0] for values in losses.values())
    summary = f"last-10 mean: bf16 {tail['bf16']:.3f}, fp8 {tail['fp8']:.3f} ({gap:.2%} apart)"
    metrics = {"losses": losses, "last10_mean": tail, "relative_gap": gap, "recipe": args.fp8_recipe}
    return gap <= FP8_LOSS_TOLERANCE and fell, summary, metrics


def time_per_step(step: Callable[[], Any], timed: int, warm_up: int = 3) -> float:
    import torch

    for _ in range(warm_up):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / timed


def _megatron_step(hf, batch: dict, impl: str, **settings) -> Callable[[], Any]:
    wrapped, optimizer = for_training(build(hf, impl, **settings), lr=1e-5)
    return partial(train_step, wrapped, optimizer, batch)


def _transformers_step(hf, batch: dict) -> Callable[[], Any]:
    """Transformers' Qwen2.5-VL with sdpa attention, bf16, fused AdamW, on the same tokens."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            hf, attn_implementation="sdpa", dtype=torch.bfloat16
        )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    tokens = batch["tokens"]  # Transformers shifts the labels itself

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def check_throughput(args: argparse.Namespace) -> Outcome:
    import torch

    hf = hf_config("1.5b")
    batch = text_batch(random_tokens(hf, args.micro_batch, args.seq_length + 1))
    tokens = args.micro_batch * args.seq_length
    flops = sft_flops_per_token(hf, args.seq_length)
    peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name())
    runs: dict[str, Callable[[], Callable[[], Any]]] = {
        "te_bf16": partial(_megatron_step, hf, batch, "transformer_engine"),
        "te_fp8": partial(
            _megatron_step, hf, batch, "transformer_engine", fp8="hybrid", fp8_recipe=args.fp8_recipe
        ),
        "local": partial(_megatron_step, hf, batch, "local"),
        "transformers_sdpa": partial(_transformers_step, hf, batch),
    }
    metrics: dict[str, Any] = {"tokens_per_step": tokens, "flops_per_token": flops, "peak_tflops": peak}
    for name, make_step in runs.items():
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds = time_per_step(make_step(), args.timed_steps)
            metrics[name] = {
                "tokens_per_s": tokens / seconds,
                "mfu": mfu(tokens / seconds, flops, peak) if peak else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / GIB,
            }
        except Exception:
            metrics[name] = {"error": traceback.format_exc()}
        gc.collect()
        torch.cuda.empty_cache()
    speed = {name: metrics[name].get("tokens_per_s") for name in runs}
    te_mfu = metrics["te_bf16"].get("mfu")
    ratios = {
        "te_bf16_over_transformers": _ratio(speed["te_bf16"], speed["transformers_sdpa"]),
        "fp8_over_te_bf16": _ratio(speed["te_fp8"], speed["te_bf16"]),
    }
    metrics["ratios"] = ratios
    passed = te_mfu is not None and te_mfu >= TARGETS["te_bf16_mfu"]
    passed &= all(value is not None and value >= TARGETS[key] for key, value in ratios.items())
    summary = ", ".join(
        f"{name} {value:,.0f} tok/s" if value else f"{name} error" for name, value in speed.items()
    )
    if te_mfu is not None:
        summary += f"; TE bf16 MFU {te_mfu:.1%}"
    summary += "; " + ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items() if v is not None)
    return passed, summary, metrics


def _ratio(ours: float | None, reference: float | None) -> float | None:
    return ours / reference if ours and reference else None


def check_grpo(args: argparse.Namespace) -> Outcome:
    from gpu_check_grpo import grpo_colocated_vllm

    return grpo_colocated_vllm(args, SHAPES[args.grpo_shape], train_step, for_training, text_batch)


CHECK_FUNCTIONS: dict[str, Callable[[argparse.Namespace], Outcome]] = {
    "te_vs_local_logits": check_logits,
    "thd_packed_loss": check_packed,
    "fp8_vs_bf16_loss": check_fp8,
    "sft_throughput": check_throughput,
    "grpo_colocated_vllm": check_grpo,
}


# ── running ──────────────────────────────────────────────────────────────────────────────────────────


def run_check(name: str, args: argparse.Namespace) -> CheckResult:
    import torch

    start = time.perf_counter()
    try:
        passed, summary, metrics = CHECK_FUNCTIONS[name](args)
        result = CheckResult(name, "pass" if passed else "fail", summary=summary, metrics=metrics)
    except Exception:
        result = CheckResult(name, "error", error=traceback.format_exc())
    gc.collect()
    torch.cuda.empty_cache()
    result.target, result.seconds = TARGET_TEXT[name], time.perf_counter() - start
    return result


def environment() -> dict[str, Any]:
    import importlib.metadata

    import torch

    versions = {}
    for package in ("torch", "transformer-engine", "megatron-core", "transformers", "vllm"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "device": torch.cuda.get_device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "cuda": torch.version.cuda,
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU, with pip install -e '.[gpu]'", file=sys.stderr)
        return 2
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown

    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    initialize(ParallelConfig(), seed=0)
    report: dict[str, Any] = {"environment": environment(), "targets": TARGETS, "results": []}
    print(json.dumps(report["environment"], indent=2), flush=True)
    results = []
    for name in sorted(args.checks, key=CHECKS.index):  # (e) last: closing vLLM ends the process group
        print(f"[gpu_check] {name} …", flush=True)
        results.append(run_check(name, args))
        report["results"] = [asdict(result) for result in results]
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(format_table(results))
    print(f"report: {args.out}")
    shutdown()
    return 0 if all(result.status == "pass" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
