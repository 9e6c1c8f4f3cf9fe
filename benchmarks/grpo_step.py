"""GRPO step costs, side by side, on a random Qwen2.5-VL of a chosen shape (CPU here; the same script
runs on a GPU).

1. The time split of a GRPO step (refit, generation, reward, train) from a real `run_grpo` run on the
   bundled arithmetic prompts with the vLLM engine (the first step, which warms the engine, excluded).
2. Rollout tokens/s: the in-process vLLM engine vs Hugging Face `generate` on the same model, prompts,
   `n` and completion length (every completion forced to the full length; after a warm-up run each,
   three runs each taken in turn, the fastest counted), in one process after the GRPO run.
3. Refit in memory (`reload_weights` from tensors) vs starting a new engine from the exported checkpoint.

Shapes: `tiny` (2 layers, hidden 128, a 512-token vocabulary) and `qwen2.5-0.5b` (Qwen2.5-0.5B's
language model: hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4,864, the real 151,936-row
vocabulary and tokenizer, tied embeddings; random weights, built offline). The toy says little about
either engine, the 0.5B shape is the smallest real one; its run sizes are cut to fit a 2-core CPU.

Usage: python benchmarks/grpo_step.py [--shape tiny|qwen2.5-0.5b] [--workdir DIR] [--steps N] [--step-only]
(`--step-only`: part 1 alone, for before/after measurements of the training code.)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A model shape and the run sizes that keep it feasible on a 2-core CPU."""

    vocab: str
    spec: dict[str, Any]  # `TinyQwen25VLSpec` fields over the vocabulary's defaults
    prompts: int
    n: int
    new_tokens: int
    steps: int  # GRPO steps; the first warms the engine and is left out of the split
    overrides: list[str] = field(default_factory=list)


TIMED_RUNS = 3  # per engine, after a warm-up run; the fastest counts

SHAPES = {
    "tiny": Shape("tiny", {"num_kv_heads": 2}, prompts=8, n=8, new_tokens=64, steps=6),
    "qwen2.5-0.5b": Shape(
        "qwen2.5",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            tie_word_embeddings=True,
        ),
        prompts=4,
        n=4,
        new_tokens=32,
        steps=2,
        overrides=["trainer.micro_batch_size=4"],  # 151,936-wide logits: keep the activations small
    ),
}


def _grpo_worker(overrides: list[str]) -> tuple[list[dict], dict[str, float]]:
    """The run's metrics, and the process's peak memory and the torch threads it trained with."""
    import torch

    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.grpo.run import run_grpo
    from xr_nemo.training.metrics import read_metrics

    config = apply_overrides(load_recipe("tiny_cpu", "grpo"), overrides)
    run_grpo(config)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return read_metrics(config.run.dir), {"peak_gib": peak_gib, "threads": torch.get_num_threads()}


def _prompts(hf_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from xr_nemo.grpo.prompts import load_prompts
    from xr_nemo.recipes.tiny_cpu import SAMPLE_PROMPTS

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    return load_prompts(str(SAMPLE_PROMPTS), "train", tokenizer, max_samples=count).token_ids


def _tokens_per_s(engines: dict[str, Callable[[], int]]) -> dict[str, float]:
    """Each engine's tokens/s: one warm-up run each (the first runs are slow), then `TIMED_RUNS` rounds
    that run the engines in turn; the fastest run of each counts. On cores shared with other processes
    both engines' OpenMP threads stall whenever one is descheduled (runs 10-40× slower were seen), so a
    single run says more about the neighbours than about the engine. An engine's callable returns the
    number of tokens it generated."""
    for generate in engines.values():
        generate()
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(TIMED_RUNS):
        for name, generate in engines.items():
            start = time.perf_counter()
            tokens = generate()
            rates[name].append(tokens / (time.perf_counter() - start))
    return {name: max(runs) for name, runs in rates.items()}


def _engines_worker(hf_dir: str, shape: Shape) -> dict[str, float]:
    """vLLM vs HF generate, and refit vs a fresh engine; in its own process (vLLM owns global state)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from xr_nemo.generation import vllm_cpu

    vllm_cpu.apply()
    from vllm import LLM, SamplingParams, TokensPrompt

    prompts = _prompts(Path(hf_dir), shape.prompts)
    engine_args = dict(
        dtype="float32", max_model_len=512, kv_cache_memory_bytes=2**28, seed=0, enforce_eager=True
    )
    start = time.perf_counter()
    llm = LLM(
        model=hf_dir,
        **engine_args,
        **vllm_cpu.multimodal_engine_kwargs(),
        **vllm_cpu.seeded_sampling_engine_kwargs(),
    )
    fresh_engine_s = time.perf_counter() - start
    weights = load_file(str(Path(hf_dir) / "model.safetensors"))
    text_weights = [(name, tensor) for name, tensor in weights.items() if not name.startswith("visual.")]
    start = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(text_weights)})
    refit_s = time.perf_counter() - start
    parameters = sum(tensor.numel() for _, tensor in text_weights)
    del weights, text_weights

    params = SamplingParams(n=shape.n, max_tokens=shape.new_tokens, temperature=1.0, ignore_eos=True, seed=0)
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def vllm_generate() -> int:
        outputs = llm.generate(requests, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    width = max(len(p) for p in prompts)
    pad = model.config.text_config.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    @torch.no_grad()
    def hf_generate() -> int:
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            num_return_sequences=shape.n,
            max_new_tokens=shape.new_tokens,
            min_new_tokens=shape.new_tokens,
        )
        return (out.shape[1] - width) * out.shape[0]

    rates = _tokens_per_s({"vllm": vllm_generate, "hf": hf_generate})
    llm.llm_engine.engine_core.shutdown()
    return {
        "vllm_tokens_per_s": rates["vllm"],
        "hf_tokens_per_s": rates["hf"],
        "refit_s": refit_s,
        "fresh_engine_s": fresh_engine_s,
        "parameters": parameters,
        "threads": torch.get_num_threads(),
    }


def _build(work: Path, shape: Shape) -> tuple[Path, Path]:
    """The random checkpoint in HF layout and its Megatron import, reused when `work` has them."""
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl, tiny_spec

    hf_dir = work / "hf"
    if not (hf_dir / "config.json").exists():
        build_tiny_qwen25_vl(hf_dir, tiny_spec(shape.vocab, **shape.spec), vocab=shape.vocab)
    checkpoint = work / "megatron"
    if not (checkpoint / "metadata.json").exists():
        import_hf(hf_dir, checkpoint, progress=False, overwrite=True)
    return hf_dir, checkpoint


def _report(
    name: str, shape: Shape, steps: int, rows: list[dict], grpo: dict, engines: dict | None, load: list[float]
) -> None:
    """A markdown table, ready for docs/benchmarks.md; `rows` are the counted steps' metrics; `engines`
    None: the engine comparison was not run."""
    phases = ("refit", "generation", "reward", "train")
    split = [statistics.mean(row[f"time_{phase}_s"] for row in rows) for phase in phases]
    step_s = statistics.mean(row["step_time_s"] for row in rows)
    completions = f"{shape.prompts} prompts × {shape.n} completions"
    counted = f"step {steps}" if steps == 2 else f"mean of steps 2–{steps}"
    table = [
        (f"step time ({counted})", f"{step_s:.2f} s"),
        ("refit / generation / reward / train", " / ".join(f"{t:.2f} s" for t in split)),
        ("share of the step", " / ".join(f"{t / step_s:.1%}" for t in split)),
        (
            "rollout tokens/s inside the step (vLLM)",
            f"{statistics.mean(row['rollout_tokens_per_s'] for row in rows):,.0f}",
        ),
        (
            "vLLM's log-probabilities after the refit vs Megatron's: mean absolute difference per token",
            f"{max(row['logprob_mismatch'] for row in rows):.1e}",
        ),
        ("peak resident memory of the training process", f"{grpo['peak_gib']:.1f} GiB"),
    ]
    threads = f"torch threads: {grpo['threads']} in training"
    if engines is not None:
        table += _engine_rows(engines, completions, shape.new_tokens)
        threads += f", {engines['threads']} in the engine comparison"
    print(f"GRPO step, shape {name}, float32; {threads}")
    print(
        f"{completions} of ≤ {shape.new_tokens} new tokens per step, {steps} steps; 1-minute load "
        f"average at the start and end {load[0]:.1f} and {load[1]:.1f}\n"
    )
    print("| measure | value |\n|---|---:|")
    for measure, value in table:
        print(f"| {measure} | {value} |")


def _engine_rows(engines: dict, completions: str, new_tokens: int) -> list[tuple[str, str]]:
    """The engine comparison's rows of the table (parts 2 and 3)."""
    vllm, hf = engines["vllm_tokens_per_s"], engines["hf_tokens_per_s"]
    refit_ms, fresh_ms = engines["refit_s"] * 1000, engines["fresh_engine_s"] * 1000
    return [
        ("language-model parameters", f"{engines['parameters'] / 1e6:.1f} M"),
        (
            f"rollout tokens/s, {completions} of exactly {new_tokens} tokens: vLLM vs "
            "Transformers `generate`",
            f"{vllm:,.0f} vs {hf:,.0f} ({vllm / hf:.2f}×)",
        ),
        (
            "refit in memory (`reload_weights`) vs starting a new engine from the checkpoint",
            f"{refit_ms:,.0f} ms vs {fresh_ms:,.0f} ms ({fresh_ms / refit_ms:.0f}×)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps, ≥ 2 (default: the shape's)")
    parser.add_argument("--step-only", action="store_true", help="skip the engine comparison (parts 2, 3)")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    steps = args.steps or shape.steps
    if steps < 2:
        parser.error("--steps must be at least 2: the first step warms the engine and is not counted")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grpo-bench-"))

    from xr_nemo.distributed.local_launch import run_distributed

    hf_dir, checkpoint = _build(work, shape)
    load = [os.getloadavg()[0]]
    overrides = [
        f"run.dir={work / 'grpo'}",
        f"model.hf_dir={hf_dir}",
        f"init.checkpoint={checkpoint}",
        f"trainer.max_steps={steps}",
        f"trainer.prompts_per_step={shape.prompts}",
        f"rollout.n={shape.n}",
        f"rollout.max_new_tokens={shape.new_tokens}",
        "trainer.resume=never",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
        *shape.overrides,
    ]
    rows, grpo = run_distributed(_grpo_worker, 1, overrides, timeout_s=3600)[0]
    engines = None
    if not args.step_only:
        engines = run_distributed(_engines_worker, 1, str(hf_dir), shape, timeout_s=3600)[0]
    load.append(os.getloadavg()[0])
    _report(args.shape, shape, steps, rows[1:], grpo, engines, load)


if __name__ == "__main__":
    main()
