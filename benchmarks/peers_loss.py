"""The fixed GRPO batch every loss-parity comparison runs on, and our loss on it.

`ParityBatch` is what each implementation sees (token ids, log-probabilities, advantages, masks), in
micro-batches of unequal token counts; `ours_loss` is `xr_nemo.grpo.step.per_token_loss` with
`xr_nemo.grpo.algorithm`'s aggregation weights, as our step composes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TOLERANCE = 1e-6


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


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def single_micro_batch(batch: ParityBatch) -> ParityBatch:
    return ParityBatch(**{**batch.__dict__, "micro_batches": [slice(0, len(batch.rewards))]})


def algorithm_defaults():
    from xr_nemo.config.schema import GRPOAlgorithmConfig

    return GRPOAlgorithmConfig()


def importance_cap() -> float:
    return algorithm_defaults().importance_cap


def batch_coverage(batch: ParityBatch) -> dict[str, float]:
    """What the parity batch exercises: tokens where each clip bound and the importance cap bind."""
    mask = batch.mask > 0
    ratio = (batch.logprobs - batch.old_logprobs).exp()
    advantages = batch.advantages[:, None].expand_as(batch.mask)
    ours = algorithm_defaults()
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
