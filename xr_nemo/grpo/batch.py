"""Scored completions → training micro-batches: one sequence per row (prompt + completion), the loss
on the sampled completion tokens, and per-token advantages and rollout log-probabilities laid out at
the label positions (position t predicts token t + 1). Loss weights are taken from whole sequences
before a micro-batch is cut to this rank's context-parallel slice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from xr_nemo.data.packing import collate
from xr_nemo.distributed import context_parallel
from xr_nemo.generation.engine import Completion
from xr_nemo.grpo.algorithm import loss_weights

Batch = dict[str, torch.Tensor | PackedSeqParams]


@dataclass
class Sample:
    prompt: list[int]
    completion: Completion
    advantage: float
    carries_loss: bool = True  # False: an over-long response masked out by `grpo.overlong=mask`


def _row(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(sample.prompt + sample.completion.token_ids)
    sampled = [float(s and sample.carries_loss) for s in sample.completion.sampled]
    return ids, np.array([0.0] * len(sample.prompt) + sampled)


def microbatch(samples: list[Sample], pad_id: int, multiple_of: int = 1, length: int | None = None) -> Batch:
    batch = collate([[_row(s)] for s in samples], pad_id, length=length, multiple_of=multiple_of)
    width = batch["tokens"].shape[1]
    advantages = torch.zeros(len(samples), width)
    rollout_logprobs = torch.zeros(len(samples), width)
    for row, sample in enumerate(samples):
        start, count = len(sample.prompt) - 1, len(sample.completion.token_ids)
        advantages[row, start : start + count] = sample.advantage
        rollout_logprobs[row, start : start + count] = torch.tensor(sample.completion.logprobs)
    batch["advantages"] = advantages
    batch["rollout_logprobs"] = rollout_logprobs
    return batch


def placeholder(pad_id: int) -> Sample:
    """A sample without loss, for a rank that has nothing to train on in a mini-batch (every data-parallel
    rank must take part in each optimizer step)."""
    return Sample([pad_id, pad_id], Completion([], []), 0.0, carries_loss=False)


def uniform_length(samples: list[Sample], multiple_of: int = 1) -> int:
    """One padded length for every micro-batch: pipeline stages exchange activations of a fixed shape."""
    longest = max((len(s.prompt) + len(s.completion.token_ids) - 1 for s in samples), default=1)
    return -(-longest // multiple_of) * multiple_of


def minibatches(
    samples: list[Sample],
    updates: int,
    micro_batch_size: int,
    pad_id: int,
    multiple_of: int = 1,
    length: int | None = None,
    loss_aggregation: str = "token",
    positions: tuple[list[int], int] | None = None,
) -> list[list[Batch]]:
    """`updates` mini-batches (one optimizer step each) of micro-batches; empty ones get a placeholder.
    The step's samples are split into `updates` consecutive parts by their position among the samples of
    every data-parallel rank (`positions`: each local sample's position and the total; default: this
    rank's own order), so an update trains on the same samples whatever the data-parallel size.
    Micro-batches are padded to their longest row, or to `length` when given. Each carries the weights
    of `loss_aggregation`, taken from whole sequences, and is then cut to this rank's context-parallel
    slice."""
    where, total = positions or (list(range(len(samples))), len(samples))
    bounds = [
        (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
        for part in np.array_split(np.arange(total), updates)
    ]
    result = []
    for low, high in bounds:
        chosen = [sample for sample, at in zip(samples, where, strict=True) if low <= at < high]
        chosen = chosen or [placeholder(pad_id)]
        result.append(
            [
                _weighted_slice(
                    microbatch(chosen[i : i + micro_batch_size], pad_id, multiple_of, length),
                    loss_aggregation,
                )
                for i in range(0, len(chosen), micro_batch_size)
            ]
        )
    return result


def _weighted_slice(batch: Batch, loss_aggregation: str) -> Batch:
    batch["loss_weights"], batch["loss_counts"] = loss_weights(batch["loss_mask"], loss_aggregation)
    return context_parallel.split_batch(batch)
