"""Which samples each optimizer step trains on: sequences (packed bins, or single samples), shuffled per
epoch from the seed, cut into global batches and split over data-parallel ranks and micro-batches. A pure
function of the step, so resuming at step N sees exactly the data an uninterrupted run would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xr_nemo.data.packing import best_fit_decreasing
from xr_nemo.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    sequences: list[list[int]]  # sample indices per sequence
    global_batch_size: int
    seed: int

    @classmethod
    def build(
        cls,
        lengths: np.ndarray,
        packing: bool,
        seq_length: int,
        global_batch_size: int,
        seed: int,
        source: str = "data.train",
    ) -> BatchPlan:
        spans = [int(length) - 1 for length in lengths]  # positions a sample takes (inputs vs labels)
        sequences = best_fit_decreasing(spans, seq_length) if packing else [[i] for i in range(len(spans))]
        if len(sequences) < global_batch_size:
            raise ConfigError(
                f"{source} makes {len(sequences)} sequence(s)"
                f"{' after packing' if packing else ''}, fewer than one global batch ({global_batch_size})",
                where=f"{source} / trainer.global_batch_size",
                fix=f"lower trainer.global_batch_size, add data to {source}"
                + (", or set data.packing=false" if packing else ""),
            )
        return cls(sequences, global_batch_size, seed)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sequences) // self.global_batch_size

    def global_batch(self, step: int) -> list[list[int]]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))
        chosen = order[index * self.global_batch_size : (index + 1) * self.global_batch_size]
        return [self.sequences[i] for i in chosen]

    def microbatches(
        self, step: int, dp_rank: int, dp_size: int, micro_batch_size: int
    ) -> list[list[list[int]]]:
        """This rank's micro-batches of the step: lists of sequences, each a list of sample indices."""
        per_rank = self.global_batch_size // dp_size
        mine = self.global_batch(step)[dp_rank * per_rank : (dp_rank + 1) * per_rank]
        return [mine[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]
