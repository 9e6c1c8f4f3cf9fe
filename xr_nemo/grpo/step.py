"""Forward steps for megatron-core's schedules: per-token log-probabilities (old policy, reference
policy), and the GRPO loss. Logits stay split over the vocabulary across tensor-parallel ranks; the
log-probability of each label and the entropy are computed on the shards with all-reduces."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams

from xr_nemo.config.schema import GRPOAlgorithmConfig
from xr_nemo.distributed.devices import to_device
from xr_nemo.grpo.algorithm import clipped_surrogate, kl_k3, truncated_importance_weights

Batch = dict[str, torch.Tensor | PackedSeqParams]
# what a training micro-batch reports, summed: loss sum, loss count, then per response token: clipped,
# kl, entropy, |train − rollout| logprob, response tokens
REPORT_WIDTH = 7


def label_logprobs(vocab_parallel_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position, [batch, seq]; differentiable."""
    return -tensor_parallel.vocab_parallel_cross_entropy(vocab_parallel_logits.clone(), labels)


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> None:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)


class _VocabParallelEntropy(torch.autograd.Function):
    """H = log Σ e^s − Σ p·s over the whole vocabulary, s the logits less their peak, from this rank's
    shard and two all-reduces. Only per-position sums are saved: the backward recomputes p from the
    logits, and its gradient, p·(Σ p·s − s), needs no communication."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        peak = logits.max(dim=-1, keepdim=True).values
        _all_reduce(peak, dist.ReduceOp.MAX, group)
        shifted = logits - peak
        exp = shifted.exp()
        sums = torch.cat([exp.sum(-1, keepdim=True), (exp * shifted).sum(-1, keepdim=True)], dim=-1)
        _all_reduce(sums, dist.ReduceOp.SUM, group)
        total, mean_shifted = sums[..., :1], sums[..., 1:] / sums[..., :1]
        ctx.save_for_backward(logits, peak, total, mean_shifted)
        return (total.log() - mean_shifted).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, peak, total, mean_shifted = ctx.saved_tensors
        shifted = logits - peak
        probs = shifted.exp() / total
        return probs * (mean_shifted - shifted) * grad.unsqueeze(-1), None


def vocab_parallel_entropy(logits: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Entropy of the full softmax per position, [batch, seq], from the vocabulary shards of `group`
    (None: `logits` hold the whole vocabulary); differentiable."""
    return _VocabParallelEntropy.apply(logits, group)


def _forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of rows holding one right-padded sample each, under plain causal attention: no real token
    sees the padding after it, so no boundaries are passed, and Transformer Engine takes micro-batches of
    several rows (it takes packed boundaries one row per micro-batch)."""
    return model(batch["tokens"], batch["position_ids"], None)


def _logprob_loss(logprobs: torch.Tensor, output: torch.Tensor):
    zero = output.sum() * 0.0
    return zero, torch.tensor(1, dtype=torch.int), {"logprobs": logprobs.detach()}


def logprob_step(temperature: float, data_iterator: Iterator[Batch], model: torch.nn.Module):
    """Forward only: reports the label log-probabilities of each micro-batch."""
    batch = to_device(next(data_iterator))
    output = _forward(model, batch)
    if not parallel_state.is_pipeline_last_stage():
        return output, partial(_logprob_loss, None)
    logits = output.float() / temperature if temperature != 1.0 else output.float()
    return output, partial(_logprob_loss, label_logprobs(logits, batch["labels"]))


def per_token_loss(
    config: GRPOAlgorithmConfig, batch: Batch, logprobs: torch.Tensor, token_entropy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, clip active, k3 KL) per token, before aggregation: the clipped surrogate weighted by
    truncated importance sampling, + kl_coef × KL, − entropy_coef × entropy. Each term goes through the
    same loss weights, so each is aggregated as the policy loss is."""
    per_token, clipped = clipped_surrogate(
        logprobs, batch["old_logprobs"], batch["advantages"], config.clip_low, config.clip_high
    )
    if config.importance_cap is not None:
        per_token = per_token * truncated_importance_weights(
            batch["old_logprobs"], batch["rollout_logprobs"], config.importance_cap
        )
    kl = torch.zeros_like(per_token)
    if config.kl_coef:
        kl = kl_k3(logprobs, batch["ref_logprobs"])
        per_token = per_token + config.kl_coef * kl
    if config.entropy_coef:
        per_token = per_token - config.entropy_coef * token_entropy
    return per_token, clipped, kl


def _policy_loss(config: GRPOAlgorithmConfig, batch: Batch, temperature: float, output: torch.Tensor):
    mask = batch["loss_mask"]
    logits = output.float() / temperature if temperature != 1.0 else output.float()
    # without the bonus, no graph: the entropy is only reported
    source = logits if config.entropy_coef else logits.detach()
    token_entropy = vocab_parallel_entropy(source, parallel_state.get_tensor_model_parallel_group())
    logprobs = label_logprobs(logits, batch["labels"])
    per_token, clipped, kl = per_token_loss(config, batch, logprobs, token_entropy)
    loss_sum = (per_token * batch["loss_weights"]).sum()
    count = batch["loss_counts"].sum()
    mismatch = (batch["old_logprobs"] - batch["rollout_logprobs"]).abs()
    report = torch.stack(
        [
            loss_sum.detach(),
            count.float(),
            (clipped * mask).sum(),
            (kl.detach() * mask).sum(),
            (token_entropy.detach() * mask).sum(),
            (mismatch * mask).sum(),
            mask.sum(),
        ]
    )
    return loss_sum, count.to(torch.int), {"report": report}


def policy_step(
    config: GRPOAlgorithmConfig, temperature: float, data_iterator: Iterator[Batch], model: torch.nn.Module
):
    batch = to_device(next(data_iterator))
    output = _forward(model, batch)
    return output, partial(_policy_loss, config, batch, temperature)
