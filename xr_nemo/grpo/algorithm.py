"""GRPO's arithmetic as small pure functions on tensors: group advantages, the clipped surrogate with
separate low/high clip ("clip-higher"), the k3 KL estimator, truncated importance sampling for the
rollout/training probability mismatch, and the weights of token- or sequence-level aggregation.

Per-token tensors are [batch, seq] with a float `mask` of the response tokens that carry loss.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool, eps: float = 1e-6):
    """rewards [groups × group_size] → advantages of the same shape: reward minus its group's mean,
    divided by the group's standard deviation when `normalize_std` (Dr. GRPO drops the division)."""
    grouped = rewards.view(-1, group_size).double()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1).to(rewards.dtype)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A bool per group: False when every completion of the group got the same reward (no signal)."""
    grouped = rewards.view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π ‖ π_ref) per token: exp(r) - r - 1 with r = log π_ref - log π;
    non-negative and unbiased for samples from π. Clamped as veRL's `low_var_kl` clamps it (ours: the
    paper names no variant): r to [-20, 20] before the exponential, the estimate to at most 10, so one
    token far off the reference cannot dominate the step."""
    ratio_log = (ref_logprobs - logprobs).clamp(-20, 20)
    return (torch.exp(ratio_log) - ratio_log - 1).clamp(max=10)


def truncated_importance_weights(
    train_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(π_train / π_rollout, cap) per token: corrects for sampling from the inference engine's
    slightly different distribution (TIS). No gradient flows through the weights."""
    return torch.exp(train_logprobs - rollout_logprobs).clamp(max=cap).detach()


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) and whether the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def loss_weights(mask: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (weights, counts) such that Σ per_token·weights / Σ counts over the whole batch is the
    loss. Computed on whole sequences, they stay right when the positions are later split over ranks
    (context parallelism): every sum is then a sum of partial sums.

    `token`: every response token weighs the same (weights and counts are the mask), so long responses
    are not down-weighted. `sequence`: the mean over each sequence's tokens (weights 1 / its token
    count), then over sequences (a count of 1 at each sequence's first response token).
    """
    if level == "token":
        return mask, mask
    if level == "sequence":
        weights = mask / mask.sum(dim=-1, keepdim=True).clamp(min=1)
        first = ((mask.cumsum(dim=-1) == 1) & (mask > 0)).to(mask.dtype)
        return weights, first
    raise ValueError(f"unknown loss aggregation {level!r}: token or sequence")
