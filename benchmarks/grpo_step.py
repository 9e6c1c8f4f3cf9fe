"""GRPO step costs, side by side, on the tiny model (CPU here; the same script runs on a GPU).

1. The time split of a GRPO step (refit, generation, reward, train) from a real `run_grpo` run on the
   bundled arithmetic prompts with the vLLM engine (the first step, which warms the engine, excluded).
2. Rollout tokens/s: the in-process vLLM engine vs Hugging Face `generate` on the same model, prompts,
   `n` and completion length (every completion forced to the full length).
3. Refit in memory (`reload_weights` from tensors) vs starting a new engine from the exported checkpoint.

Usage: python benchmarks/grpo_step.py [--workdir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS, N, NEW_TOKENS = 8, 8, 64


def _grpo_worker(overrides: list[str]) -> list[dict]:
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.grpo.run import run_grpo
    from xr_nemo.training.metrics import read_metrics

    config = apply_overrides(load_recipe("tiny_cpu", "grpo"), overrides)
    run_grpo(config)
    return read_metrics(config.run.dir)


def _prompts(hf_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    from xr_nemo.grpo.prompts import load_prompts
    from xr_nemo.recipes.tiny_cpu import SAMPLE_PROMPTS

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    return load_prompts(str(SAMPLE_PROMPTS), "train", tokenizer, max_samples=PROMPTS).token_ids


def _engines_worker(hf_dir: str) -> dict[str, float]:
    """vLLM vs HF generate, and refit vs a fresh engine; in its own process (vLLM owns global state)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from xr_nemo.generation import vllm_cpu

    vllm_cpu.apply()
    from vllm import LLM, SamplingParams, TokensPrompt

    prompts = _prompts(Path(hf_dir))
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

    params = SamplingParams(n=N, max_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True, seed=0)
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(requests, params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    vllm_s = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    width = max(len(p) for p in prompts)
    pad = model.config.text_config.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            num_return_sequences=N,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
        )
    hf_s = time.perf_counter() - start
    hf_tokens = (out.shape[1] - width) * out.shape[0]
    llm.llm_engine.engine_core.shutdown()
    return {
        "vllm_tokens_per_s": tokens / vllm_s,
        "hf_tokens_per_s": hf_tokens / hf_s,
        "refit_s": refit_s,
        "fresh_engine_s": fresh_engine_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="grpo-bench-"))

    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.distributed.local_launch import run_distributed
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = work / "hf"
    if not (hf_dir / "config.json").exists():
        build_tiny_qwen25_vl(hf_dir, TinyQwen25VLSpec(num_kv_heads=2))
    checkpoint = work / "megatron"
    if not (checkpoint / "metadata.json").exists():
        import_hf(hf_dir, checkpoint, progress=False, overwrite=True)

    overrides = [
        f"run.dir={work / 'grpo'}",
        f"model.hf_dir={hf_dir}",
        f"init.checkpoint={checkpoint}",
        f"trainer.max_steps={args.steps}",
        f"trainer.prompts_per_step={PROMPTS}",
        f"rollout.n={N}",
        f"rollout.max_new_tokens={NEW_TOKENS}",
        "trainer.resume=never",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
    ]
    rows = run_distributed(_grpo_worker, 1, overrides)[0][1:]
    split = {
        key: statistics.mean(row[key] for row in rows)
        for key in ("time_refit_s", "time_generation_s", "time_reward_s", "time_train_s", "step_time_s")
    }
    engines = run_distributed(_engines_worker, 1, str(hf_dir))[0]

    print(f"GRPO step on the tiny model, {PROMPTS} prompts × {N} completions, ≤ {NEW_TOKENS} new tokens")
    print(f"  mean over steps 2..{args.steps}: " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    for key in ("time_refit_s", "time_generation_s", "time_reward_s", "time_train_s"):
        print(
            f"  {key.removeprefix('time_').removesuffix('_s'):>10}: {split[key] / split['step_time_s']:6.1%}"
        )
    print(f"rollout tokens/s, {PROMPTS}×{N} completions of exactly {NEW_TOKENS} tokens:")
    print(
        f"  vLLM {engines['vllm_tokens_per_s']:.0f}, HF generate {engines['hf_tokens_per_s']:.0f}: "
        f"{engines['vllm_tokens_per_s'] / engines['hf_tokens_per_s']:.2f}×"
    )
    print(
        f"refit in memory {engines['refit_s'] * 1000:.0f} ms vs a fresh engine from disk "
        f"{engines['fresh_engine_s'] * 1000:.0f} ms: {engines['fresh_engine_s'] / engines['refit_s']:.0f}×"
    )


if __name__ == "__main__":
    main()
