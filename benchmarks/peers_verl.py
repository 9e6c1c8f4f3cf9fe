"""veRL's GRPO loss functions, from the pinned verbatim copy in `benchmarks/third_party/verl/` (its
README says which commit), executed with only torch and numpy, and compared with ours."""

from __future__ import annotations

import ast
import hashlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from peers_loss import (
    ParityBatch,
    algorithm_defaults,
    importance_cap,
    importance_weights,
    loss_and_grad,
    max_diff,
    ours_loss,
    single_micro_batch,
)

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
    ours = algorithm_defaults()
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
    kl_coef = algorithm_defaults().kl_coef
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
        "group advantages": max_diff(batch.advantages[:, None] * batch.mask, verl_adv),
        "k3 KL vs low_var_kl (batch)": max_diff(
            kl_k3(batch.logprobs, batch.ref_logprobs),
            verl.kl_penalty(batch.logprobs, batch.ref_logprobs, "low_var_kl"),
        ),
        "k3 KL vs low_var_kl (log-ratios -40..40)": max_diff(
            kl_k3(torch.zeros_like(far), far), verl.kl_penalty(torch.zeros_like(far), far, "low_var_kl")
        ),
    }
    cap = importance_cap()
    cases = {
        "token-mean, one micro-batch": ("token", "token-mean", None, True, True),
        "token-mean, two micro-batches (batch_num_tokens)": ("token", "token-mean", None, False, True),
        "token-mean + TIS weights, two micro-batches": ("token", "token-mean", cap, False, True),
        "seq-mean-token-mean, one micro-batch": ("sequence", "seq-mean-token-mean", None, True, False),
    }
    for name, (ours_mode, verl_mode, tis, single, global_tokens) in cases.items():
        case = single_micro_batch(batch) if single else batch
        weights = importance_weights(case, tis) if tis is not None else None
        ours = loss_and_grad(lambda lp, c=case, t=tis, m=ours_mode: ours_loss(c, lp, m, t), case)
        theirs = loss_and_grad(
            lambda lp, c=case, w=weights, m=verl_mode, g=global_tokens: verl_loss(verl, c, lp, m, w, g), case
        )
        results[f"loss, {name}"] = max_diff(ours[0], theirs[0])
        results[f"gradient, {name}"] = max_diff(ours[1], theirs[1])
    return results
