"""Forward steps for megatron-core's schedules: per-token log-probabilities (old policy, reference
policy), and the GRPO loss. Logits stay split over the vocabulary across tensor-parallel ranks; the
log-probability of each label and the entropy are computed on the shards with all-reduces."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams

from xr_nemo.config.schema import GRPOAlgorithmConfig
from xr_nemo.distributed.devices import to_device
from xr_nemo.grpo.algorithm import clipped_surrogate, kl_k3, truncated_importance_weights
from xr_nemo.models.scored_positions import (
    gather_scored,
    logits_only_at,
    scatter_scored,
    sequence_first_index,
)

Batch = dict[str, torch.Tensor | PackedSeqParams]
# what a training micro-batch reports, summed: loss sum, loss count, then per response token: clipped,
# kl, entropy, |train − rollout| logprob, response tokens
REPORT_WIDTH = 7


# logits upcast at a time: chunks of rows of this many elements (64 MiB in float32; two such buffers at
# most), so no temporary as large as a micro-batch's [tokens × vocabulary] logits is made; large enough
# for each GPU kernel to outweigh its launch
CHUNK_ELEMENTS = 1 << 24


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> None:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)


def _shift_into(
    out: torch.Tensor, rows: torch.Tensor, peak: torch.Tensor, temperature: float
) -> torch.Tensor:
    """s = rows / temperature − peak, written into `out` (a reused buffer of the computing dtype)."""
    if temperature == 1.0:
        return torch.sub(rows, peak, out=out)
    return out.copy_(rows).div_(temperature).sub_(peak)


def _chunks(rows: int, step: int) -> Iterator[slice]:
    """Slices of `step` rows, the last one shorter."""
    return (slice(start, min(start + step, rows)) for start in range(0, rows, step))


class _VocabParallelLogprobs(torch.autograd.Function):
    """log p(label) = s_label − log Σ e^s and, with `entropy`, H = log Σ e^s − Σ p·s, s the scaled logits
    less their peak, in one pass over this rank's vocabulary shard, a chunk of rows at a time, and two
    all-reduces (the peak; then Σ e^s, s_label — nonzero on one rank only — and Σ e^s·s).

    Only the logits and per-position values are saved (megatron-core's vocab-parallel cross entropy
    saves the whole softmax): the backward recomputes p chunk by chunk. The gradient with respect to s,
    g_logp·(onehot − p) + g_H·p·(Σ p·s − s), needs no communication."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        group: dist.ProcessGroup | None,
        vocab_start: int,
        chunk_elements: int,
        entropy: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        rows, width = logits.flatten(0, -2), logits.shape[-1]
        # dividing by a positive temperature keeps the order, so the peak of the scaled logits is exact
        peak = rows.max(dim=-1).values.to(dtype)
        peak = (peak / temperature if temperature != 1.0 else peak).unsqueeze(-1)
        _all_reduce(peak, dist.ReduceOp.MAX, group)
        target = labels.flatten() - vocab_start
        inside = (target >= 0) & (target < width)
        target = torch.where(inside, target, 0).unsqueeze(-1)
        step = max(1, min(rows.shape[0], chunk_elements // width))
        shifted_buffer = logits.new_empty(step, width, dtype=dtype)
        exp_buffer = torch.empty_like(shifted_buffer) if entropy else None
        sums = logits.new_empty(rows.shape[0], 3 if entropy else 2, dtype=dtype)
        for chunk in _chunks(rows.shape[0], step):
            n = chunk.stop - chunk.start
            shifted = _shift_into(shifted_buffer[:n], rows[chunk], peak[chunk], temperature)
            sums[chunk, 1] = torch.where(inside[chunk], shifted.gather(-1, target[chunk]).squeeze(-1), 0.0)
            if exp_buffer is None:
                sums[chunk, 0] = shifted.exp_().sum(-1)
                continue
            exp = torch.exp(shifted, out=exp_buffer[:n])
            sums[chunk, 0] = exp.sum(-1)
            sums[chunk, 2] = exp.mul_(shifted).sum(-1)
        _all_reduce(sums, dist.ReduceOp.SUM, group)
        total, log_total = sums[:, :1], sums[:, :1].log()
        logprobs = (sums[:, 1] - log_total.squeeze(-1)).view(labels.shape)
        mean_shifted = sums[:, 2:] / total if entropy else None
        ctx.save_for_backward(logits, peak, total, mean_shifted, target, inside)
        ctx.temperature, ctx.step = temperature, step
        ctx.set_materialize_grads(False)
        if not entropy:
            return logprobs
        return logprobs, (log_total - mean_shifted).view(labels.shape)

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None = None):
        logits, peak, total, mean_shifted, target, inside = ctx.saved_tensors
        temperature, step = ctx.temperature, ctx.step
        rows, width = logits.flatten(0, -2), logits.shape[-1]
        grad = torch.empty_like(rows, memory_format=torch.contiguous_format)
        # ∂/∂logits = (e^s·(b − a·s) + g_logp·onehot) / T per row, with a = g_H / Σe^s and
        # b = (g_H·Σ p·s − g_logp) / Σe^s
        a = None if grad_entropy is None else grad_entropy.reshape(-1, 1).to(total.dtype) / total
        b = torch.zeros_like(total) if a is None else a * mean_shifted
        if grad_logprobs is not None:
            label_grad = grad_logprobs.reshape(-1, 1).to(total.dtype)
            b = b - label_grad / total
            picked = torch.where(inside.unsqueeze(-1), label_grad, 0.0)
        shifted_buffer = logits.new_empty(step, width, dtype=total.dtype)
        weights_buffer = None if a is None else torch.empty_like(shifted_buffer)
        for chunk in _chunks(rows.shape[0], step):
            n = chunk.stop - chunk.start
            shifted = _shift_into(shifted_buffer[:n], rows[chunk], peak[chunk], temperature)
            weights = b[chunk]
            if weights_buffer is not None:
                weights = torch.addcmul(weights, a[chunk], shifted, value=-1, out=weights_buffer[:n])
            part = shifted.exp_().mul_(weights)
            if grad_logprobs is not None:
                part.scatter_add_(-1, target[chunk], picked[chunk])
            grad[chunk] = part.div_(temperature) if temperature != 1.0 else part
        return grad.view_as(logits), None, None, None, None, None, None


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    group: dist.ProcessGroup | None = None,
    vocab_start: int = 0,
    *,
    entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(label), entropy if asked for) per position, [batch, seq] each, of softmax(logits /
    temperature) over the whole vocabulary, from this rank's shard of `group`, which starts at id
    `vocab_start` (None: the logits hold the whole vocabulary); computed in float32 at least, whatever
    the logits' dtype, and differentiable. Beyond the logits, autograd keeps only per-position values."""
    out = _VocabParallelLogprobs.apply(
        logits, labels, temperature, group, vocab_start, chunk_elements, entropy
    )
    return out if entropy else (out, None)


def _label_stats(
    output: torch.Tensor, labels: torch.Tensor, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`vocab_parallel_logprobs` of the model's output on this rank's tensor-parallel vocabulary shard."""
    vocab_start = parallel_state.get_tensor_model_parallel_rank() * output.shape[-1]
    group = parallel_state.get_tensor_model_parallel_group()
    return vocab_parallel_logprobs(
        output, labels, temperature, group, vocab_start, entropy=entropy, chunk_elements=CHUNK_ELEMENTS
    )


def _scored_label_stats(
    output: torch.Tensor, scored: torch.Tensor | None, labels: torch.Tensor, temperature: float, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_label_stats` as [batch, seq]: of logits at every position (`scored` None), or of the one row of
    logits at the positions `scored` chose (`logits_only_at`), zero at the others."""
    if scored is None:
        return _label_stats(output, labels, temperature, entropy)
    batch, seq = labels.shape
    stats = _label_stats(output, gather_scored(labels, scored), temperature, entropy)
    return tuple(None if s is None else scatter_scored(s, scored, batch, seq) for s in stats)


def _forward(
    model: torch.nn.Module, data_iterator: Iterator[Batch]
) -> tuple[Batch, torch.Tensor, torch.Tensor | None]:
    """The next batch on the model's device, the model's output and, when that holds logits only at the
    scored (response) positions, their sequence-first index. Rows hold one right-padded sample each,
    under plain causal attention: no real token sees the padding after it, so no boundaries are passed,
    and Transformer Engine takes micro-batches of several rows (it takes packed boundaries one row per
    micro-batch)."""
    batch = next(data_iterator)
    scored = to_device(sequence_first_index(batch["loss_mask"]))  # found on the host: no device sync
    batch = to_device(batch)
    with logits_only_at(model, scored) as selected:
        output = model(batch["tokens"], batch["position_ids"], None)
    return batch, output, scored if selected else None


def _logprob_loss(logprobs: torch.Tensor, output: torch.Tensor):
    zero = output.sum() * 0.0
    return zero, torch.tensor(1, dtype=torch.int), {"logprobs": logprobs.detach()}


def logprob_step(temperature: float, data_iterator: Iterator[Batch], model: torch.nn.Module):
    """Forward only: reports the label log-probabilities of each micro-batch at its response positions
    (zero elsewhere)."""
    batch, output, scored = _forward(model, data_iterator)
    if not parallel_state.is_pipeline_last_stage():
        return output, partial(_logprob_loss, None)
    logprobs, _ = _scored_label_stats(output, scored, batch["labels"], temperature, entropy=False)
    return output, partial(_logprob_loss, logprobs)


def old_logprobs(batch: Batch, logprobs: torch.Tensor) -> torch.Tensor:
    """π_old's log-probabilities: those a forward pass attached to the batch before the first update,
    or, when none did (one update per rollout batch: π_old is the policy being updated), the current
    ones detached — the same values without a second forward pass, as veRL's on-policy path and TRL's
    single-iteration path take them."""
    attached = batch.get("old_logprobs")
    return logprobs.detach() if attached is None else attached


def per_token_loss(
    config: GRPOAlgorithmConfig, batch: Batch, logprobs: torch.Tensor, token_entropy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, clip active, k3 KL) per token, before aggregation: the clipped surrogate weighted by
    truncated importance sampling, + kl_coef × KL, − entropy_coef × entropy. Each term goes through the
    same loss weights, so each is aggregated as the policy loss is."""
    old = old_logprobs(batch, logprobs)
    per_token, clipped = clipped_surrogate(
        logprobs, old, batch["advantages"], config.clip_low, config.clip_high
    )
    if config.importance_cap is not None:
        per_token = per_token * truncated_importance_weights(
            old, batch["rollout_logprobs"], config.importance_cap
        )
    kl = torch.zeros_like(per_token)
    if config.kl_coef:
        kl = kl_k3(logprobs, batch["ref_logprobs"])
        per_token = per_token + config.kl_coef * kl
    if config.entropy_coef:
        per_token = per_token - config.entropy_coef * token_entropy
    return per_token, clipped, kl


def _policy_loss(
    config: GRPOAlgorithmConfig,
    batch: Batch,
    scored: torch.Tensor | None,
    temperature: float,
    output: torch.Tensor,
):
    mask = batch["loss_mask"]
    logprobs, token_entropy = _scored_label_stats(output, scored, batch["labels"], temperature, entropy=True)
    if not config.entropy_coef:
        token_entropy = token_entropy.detach()  # only reported: its gradient is not computed
    per_token, clipped, kl = per_token_loss(config, batch, logprobs, token_entropy)
    loss_sum = (per_token * batch["loss_weights"]).sum()
    count = batch["loss_counts"].sum()
    mismatch = (old_logprobs(batch, logprobs) - batch["rollout_logprobs"]).abs()
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
    batch, output, scored = _forward(model, data_iterator)
    return output, partial(_policy_loss, config, batch, scored, temperature)
