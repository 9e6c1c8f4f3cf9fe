"""Which samples each optimizer step trains on, as a pure function of the step, so resuming at step N sees
exactly the data an uninterrupted run would. A step is sized one of two ways:

- `trainer.global_batch_size` sequences (`SequenceBatches`): the samples are packed once into sequences,
  which are shuffled per epoch and cut into global batches; samples per step follow sample lengths.
- `trainer.global_batch_samples` samples (`SampleBatches`, the paper's count): the samples are shuffled
  per epoch and cut into global batches of that many (an epoch's last holds the rest), each packed into
  as many sequences as it needs; steps per epoch = ceil(samples / global_batch_samples).

Either way a step's sequences are dealt to the data-parallel ranks in equal numbers of full
micro-batches, made up with empty sequences (no tokens, no loss) where they do not divide: every rank,
and so every pipeline stage, runs the same number of micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xr_nemo.data.packing import best_fit_decreasing
from xr_nemo.errors import ConfigError

Packed = list[int]  # the sample indices of one sequence; [] is an empty (padding) sequence
Micro = list[Packed]  # the sequences of one micro-batch


def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def deal(sequences: list[Packed], dp_rank: int, dp_size: int, micro_batch_size: int) -> list[Micro]:
    """This rank's micro-batches of a step's `sequences`: contiguous equal shares, the last ones made up
    with empty sequences so that every rank gets the same number of full micro-batches."""
    per_step = dp_size * micro_batch_size
    padded = sequences + [[] for _ in range(-len(sequences) % per_step)]
    per_rank = len(padded) // dp_size
    mine = padded[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]


class BatchPlan:
    """What both kinds of plan give: the step's sequences, and this rank's share of them."""

    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    @property
    def epoch_size(self) -> int:
        """The data one epoch draws, in the unit of `position`."""
        raise NotImplementedError

    def position(self, step: int) -> int:
        """The data the steps before `step` drew: samples (`SampleBatches`), or packed sequences
        (`SequenceBatches`, whose steps hold as many samples as fit and whose epochs leave out the
        sequences that do not fill a last global batch)."""
        raise NotImplementedError

    def global_batch(self, step: int) -> list[Packed]:
        raise NotImplementedError

    def summary(self) -> str:
        """What a step holds, for the log."""
        raise NotImplementedError

    def microbatches(self, step: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> list[Micro]:
        return deal(self.global_batch(step), dp_rank, dp_size, micro_batch_size)


@dataclass(frozen=True)
class SequenceBatches(BatchPlan):
    """`global_batch_size` sequences per step, packed once for the whole run."""

    sequences: list[Packed]
    global_batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sequences) // self.global_batch_size

    @property
    def epoch_size(self) -> int:
        return self.steps_per_epoch * self.global_batch_size

    def position(self, step: int) -> int:
        return step * self.global_batch_size

    def global_batch(self, step: int) -> list[Packed]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self.seed, epoch, len(self.sequences))
        chosen = order[index * self.global_batch_size : (index + 1) * self.global_batch_size]
        return [self.sequences[i] for i in chosen]

    def summary(self) -> str:
        return f"{len(self.sequences)} sequences, {self.global_batch_size} per step"


@dataclass(frozen=True)
class SampleBatches(BatchPlan):
    """`global_batch_samples` samples per step, packed step by step."""

    spans: list[int]  # positions each sample takes in a sequence
    global_batch_samples: int
    seed: int
    packing: bool
    seq_length: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.spans) // self.global_batch_samples)

    @property
    def epoch_size(self) -> int:
        return len(self.spans)

    def position(self, step: int) -> int:
        epoch, index = divmod(step, self.steps_per_epoch)
        return epoch * self.epoch_size + index * self.global_batch_samples

    def samples(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self.seed, epoch, len(self.spans))
        size = self.global_batch_samples
        return [int(i) for i in order[index * size : (index + 1) * size]]

    def global_batch(self, step: int) -> list[Packed]:
        chosen = self.samples(step)
        if not self.packing:
            return [[i] for i in chosen]
        bins = best_fit_decreasing([self.spans[i] for i in chosen], self.seq_length)
        return [[chosen[p] for p in positions] for positions in bins]

    def summary(self) -> str:
        packed = f"packed into sequences of ≤ {self.seq_length} tokens" if self.packing else "unpacked"
        return f"{self.global_batch_samples} per step, {packed}"


def _too_small(source: str, have: str, key: str, size: int, also: str = "") -> ConfigError:
    return ConfigError(
        f"{source} makes {have}, fewer than one global batch ({key}={size})",
        where=f"{source} / {key}",
        fix=f"lower {key}, add data to {source}{also}",
    )


def build_plan(
    lengths: Sequence[int],
    packing: bool,
    seq_length: int,
    seed: int,
    global_batch_size: int | None = None,
    global_batch_samples: int | None = None,
    source: str = "data.train",
) -> BatchPlan:
    """The plan for exactly one of `global_batch_size` (sequences) and `global_batch_samples`."""
    spans = [int(length) - 1 for length in lengths]  # positions a sample takes (inputs vs labels)
    if global_batch_samples is not None:
        if len(spans) < global_batch_samples:
            key = "trainer.global_batch_samples"
            raise _too_small(source, f"{len(spans)} sample(s)", key, global_batch_samples)
        return SampleBatches(spans, global_batch_samples, seed, packing, seq_length)
    assert global_batch_size is not None, "one of global_batch_size and global_batch_samples is set"
    sequences = best_fit_decreasing(spans, seq_length) if packing else [[i] for i in range(len(spans))]
    if len(sequences) < global_batch_size:
        have = f"{len(sequences)} sequence(s){' after packing' if packing else ''}"
        more = ", or set data.packing=false" if packing else ""
        raise _too_small(source, have, "trainer.global_batch_size", global_batch_size, more)
    return SequenceBatches(sequences, global_batch_size, seed)
