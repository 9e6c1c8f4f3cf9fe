"""(e) of `gpu_check.py`: one GRPO step with vLLM in the training process, driven as GRPO drives it.

The policy (layers as `model.transformer_impl=auto` picks them: TE when it imports) is refit into a
vLLM engine started with dummy weights; the engine samples; it sleeps while the policy takes an update
that raises the logprobs of what was sampled; it wakes its weights, is refit, wakes its KV cache and
samples again. Checked: vLLM's logprobs equal the policy's before and after the refit (mean |Δ| ≤ 0.02
nats per token, both in bf16), the update moved the policy by more than that, and sleeping freed device
memory. Recorded: the time of each phase, device memory after each, and the training peak.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from gpu_check_models import SHAPES, for_training, text_batch, train_step
from gpu_check_runner import record_partial

LOGPROB_TOLERANCE = 0.02
PROMPTS, PROMPT_TOKENS, SAMPLES_PER_PROMPT, NEW_TOKENS = 8, 64, 4, 128
KV_CACHE_GIB = 4.0
GIB = 1024**3


def _device_used_gib() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / GIB


def _rows(prompts: list[list[int]], completions) -> tuple[Any, Any]:
    """[rows, length + 1] prompt-and-completion tokens (right-padded) and the mask of completion labels."""
    import torch

    rows = [prompt + completion.token_ids for prompt, completion in zip(prompts, completions, strict=True)]
    width = max(map(len, rows))
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, len(prompt) - 1 : len(row) - 1] = 1.0
    return tokens.cuda(), mask.cuda()  # (e) runs on a GPU only


def policy_logprobs(model, prompts: list[list[int]], completions) -> list[float]:
    """The policy's logprob of every sampled token, in completion order."""
    import torch

    tokens, mask = _rows(prompts, completions)
    batch = text_batch(tokens, mask)
    model.eval()
    with torch.no_grad():
        per_token = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    model.train()
    return (-per_token[mask.bool()]).tolist()


def _mean_abs(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def check_grpo(args) -> tuple[bool, str, dict[str, Any]]:
    """(e) of `gpu_check.py`, with the policy of `--grpo-shape`."""
    return grpo_colocated_vllm(args, SHAPES[args.grpo_shape])


def grpo_colocated_vllm(args, spec: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    import torch
    from transformers import AutoConfig

    from xr_nemo.config.schema import EngineKind, GenerationConfig, SFTConfig
    from xr_nemo.generation.engine import Sampling
    from xr_nemo.generation.factory import build_engine
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl
    from xr_nemo.training.setup import build_model

    hf_dir = build_tiny_qwen25_vl(args.workdir / "grpo_model", TinyQwen25VLSpec(**spec), dtype=torch.bfloat16)
    config = SFTConfig()
    config.model.dtype = "bfloat16"
    model = build_model(AutoConfig.from_pretrained(hf_dir), config)
    wrapped, optimizer = for_training(model, lr=1e-4)
    engine = build_engine(
        GenerationConfig(engine=EngineKind.vllm, gpu_memory_utilization=0.5, kv_cache_gib=KV_CACHE_GIB),
        hf_dir,
        dtype=torch.bfloat16,
        max_model_len=PROMPT_TOKENS + NEW_TOKENS + 64,
        seed=0,
        model=model,
    )
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 400, (PROMPT_TOKENS,), generator=generator).tolist() for _ in range(PROMPTS)]
    prompts = [prompt for prompt in prompts for _ in range(SAMPLES_PER_PROMPT)]
    seeds = list(range(len(prompts)))
    sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=1.0)
    seconds: dict[str, float] = {}
    memory: dict[str, float] = {}

    def phase(name: str, action: Callable[[], Any]) -> Any:
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = action()
        torch.cuda.synchronize()
        seconds[name], memory[name] = time.perf_counter() - start, _device_used_gib()
        return out

    try:
        phase("refit_at_start", lambda: engine.refit(model))
        first = phase("generate", lambda: engine.sample(prompts, seeds, sampling))
        before = phase("policy_logprobs", lambda: policy_logprobs(model, prompts, first))
        phase("sleep", lambda: engine.sleep(args.sleep_level))
        torch.cuda.reset_peak_memory_stats()
        tokens, mask = _rows(prompts, first)
        phase("train", lambda: train_step(wrapped, optimizer, text_batch(tokens, mask)))
        train_peak = torch.cuda.max_memory_allocated() / GIB
        phase("wake_weights", engine.wake_weights)
        phase("refit", lambda: engine.refit(model))
        phase("wake_cache", engine.wake_cache)
        second = phase("generate_after_refit", lambda: engine.sample(prompts, seeds, sampling))
        after = policy_logprobs(model, prompts, second)
        moved = _mean_abs(policy_logprobs(model, prompts, first), before)
    except Exception:  # kept before closing: a close that hangs on a broken GPU must not lose it
        record_partial(error_before_close=traceback.format_exc(), seconds=seconds)
        raise
    finally:
        engine.close()  # also after an error: vLLM's workers and memory go with it

    engine_first = [lp for completion in first for lp in completion.logprobs]
    engine_second = [lp for completion in second for lp in completion.logprobs]
    error_before, error_after = _mean_abs(engine_first, before), _mean_abs(engine_second, after)
    freed = memory["policy_logprobs"] - memory["sleep"]
    metrics = {
        "transformer_impl": model.config.transformer_impl,
        "sleep_level": args.sleep_level,
        "logprob_error_before_update": error_before,
        "logprob_error_after_refit": error_after,
        "update_moved_logprobs": moved,
        "seconds": seconds,
        "device_used_gib_after": memory,
        "sleep_freed_gib": freed,
        "train_peak_allocated_gib": train_peak,
        "sampled_tokens": len(engine_first),
    }
    passed = max(error_before, error_after) <= LOGPROB_TOLERANCE and moved > 2 * error_after and freed > 0
    split = ", ".join(f"{name} {value:.2f}s" for name, value in seconds.items())
    summary = (
        f"logprob |Δ| {error_before:.4f} before, {error_after:.4f} after refit (update moved {moved:.3f}); "
        f"sleep freed {freed:.1f} GiB; train peak {train_peak:.1f} GiB; {split}"
    )
    return passed, summary, metrics
