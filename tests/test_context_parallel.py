"""The context-parallel sequence split: the same load-balanced layout as megatron-core's, gathering the
slices of every rank restores the sequence, and GRPO's loss weights summed over the slices equal the
whole batch's."""

import pytest
import torch
from megatron.core.utils import get_batch_on_this_cp_rank

from xr_nemo.config import ParallelConfig
from xr_nemo.distributed.context_parallel import _in_sequence_order, split_sequence


class _Group:
    """What megatron-core's batch split reads of a process group."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


@pytest.mark.parametrize("cp_size", [2, 3, 4])
def test_split_matches_megatron_core_and_gathering_restores_the_sequence(cp_size, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # read only for the group size
    tokens = torch.arange(2 * 24).reshape(2, 24)
    mask = torch.rand(2, 1, 24, 24) > 0.5
    slices = []
    for cp_rank in range(cp_size):
        expected = get_batch_on_this_cp_rank(
            {"tokens": tokens.clone(), "attention_mask": mask.clone()}, _Group(cp_rank, cp_size)
        )
        assert torch.equal(split_sequence(tokens, 1, cp_rank, cp_size), expected["tokens"])
        assert torch.equal(split_sequence(mask, 2, cp_rank, cp_size), expected["attention_mask"])
        slices.append(split_sequence(tokens, 1, cp_rank, cp_size))
    gathered = torch.cat(slices, dim=1).T  # what the all-gather gives, sequence first
    assert torch.equal(_in_sequence_order(gathered, cp_size).T, tokens)


def test_a_length_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="not a multiple of 2 × context_parallel = 4"):
        split_sequence(torch.zeros(1, 10), 1, 0, 2)


@pytest.mark.parametrize(
    ("parallel", "multiple"),
    [
        (ParallelConfig(), 1),
        (ParallelConfig(context_parallel=2), 4),
        (ParallelConfig(tensor_parallel=2, sequence_parallel=True), 2),
        (ParallelConfig(tensor_parallel=4, sequence_parallel=True, context_parallel=2), 16),
    ],
)
def test_sequences_are_padded_to_what_the_layout_splits(parallel, multiple):
    assert parallel.sequence_multiple == multiple


def grpo_sums_worker(context_parallel: int, level: str) -> tuple[float, float]:
    """Σ labels·loss weights and Σ loss counts over this rank's slices of GRPO micro-batches whose
    responses cross the chunk boundaries."""
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.generation.engine import Completion
    from xr_nemo.grpo.batch import Sample, minibatches

    initialize(ParallelConfig(context_parallel=context_parallel))
    samples = [
        Sample([1, 2, 3], Completion(list(range(10, 10 + length)), [-0.5] * length), 1.0)
        for length in (29, 17, 8, 1)
    ]
    updates = minibatches(samples, 1, 2, pad_id=0, multiple_of=4, loss_aggregation=level)
    weighted = sum(float((b["labels"].float() * b["loss_weights"]).sum()) for b in updates[0])
    counts = sum(float(b["loss_counts"].sum()) for b in updates[0])
    shutdown()
    return weighted, counts


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_grpo_loss_weights_come_from_whole_sequences_under_context_parallelism(level):
    from xr_nemo.distributed.local_launch import run_distributed

    (whole,) = run_distributed(grpo_sums_worker, 1, 1, level)
    slices = run_distributed(grpo_sums_worker, 2, 2, level)
    assert sum(weighted for weighted, _ in slices) == pytest.approx(whole[0], rel=1e-6)
    assert sum(count for _, count in slices) == whole[1]
    assert all(0 < weighted < whole[0] for weighted, _ in slices)  # both ranks hold response tokens
