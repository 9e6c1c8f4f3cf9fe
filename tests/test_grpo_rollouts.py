"""Rollouts over two data-parallel ranks with a scripted engine: each rank generates its share, the
rewards come from the worker pool, and dynamic sampling keeps exactly the first informative groups in
the global (round, rank, prompt) order, sampling more rounds until the step is full."""

import pytest

from xr_nemo.distributed.local_launch import run_distributed

PROMPTS, PER_STEP, N = 12, 4, 4


class ParityEngine:
    """Prompt [i]: even i always answers 1 (all correct: no signal); odd i answers seed % 2 (mixed)."""

    collective = False

    def sample(self, prompts, seeds, sampling):
        from xr_nemo.generation.engine import Completion

        return [
            Completion([1 if prompt[0] % 2 == 0 else seed % 2], [-0.1], finished=True)
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]


def rollout_worker(dynamic: bool, cursor: int):
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.generation.engine import Sampling
    from xr_nemo.grpo.prompts import PromptItem, PromptSet
    from xr_nemo.grpo.rollouts import RolloutWorker
    from xr_nemo.rewards.pool import RewardPool

    initialize(ParallelConfig())
    prompts = PromptSet(
        [PromptItem(f"p{i}", f"q{i}", "1") for i in range(PROMPTS)], [[i] for i in range(PROMPTS)]
    )
    with RewardPool(workers=1) as pool:
        worker = RolloutWorker(
            prompts,
            ParityEngine(),
            sampling=Sampling(max_new_tokens=1),
            n=N,
            seed=3,
            pool=pool,
            decode=lambda ids: f"<think>t</think><answer>{ids[0]}</answer>",
        )
        result = worker.collect(cursor, PER_STEP, dynamic, max_rounds=5)
    shutdown()
    return {
        "kept": [g.prompt_index for g in result.kept],
        "generated": [g.prompt_index for g in result.generated],
        "rewards": [[s.reward for s in g.scores] for g in result.kept],
        "rounds": result.rounds,
        "next_cursor": result.next_cursor,
        "kept_total": result.kept_total,
    }


def _informative_in_order(cursor: int, rounds: int) -> list[int]:
    from xr_nemo.grpo.rollouts import prompt_order

    order = prompt_order(PROMPTS, 3, cursor, PER_STEP * rounds)
    return [i for i in order if i % 2 == 1]


@pytest.mark.parametrize("cursor", [0, 10], ids=["start", "across-an-epoch"])
def test_dynamic_sampling_keeps_the_first_informative_groups(cursor):
    ranks = run_distributed(rollout_worker, 2, True, cursor)
    rounds = ranks[0]["rounds"]
    kept = ranks[0]["kept"] + ranks[1]["kept"]
    assert all(r["kept_total"] == PER_STEP for r in ranks)
    assert kept == _informative_in_order(cursor, rounds)[:PER_STEP]
    assert len(_informative_in_order(cursor, rounds - 1)) < PER_STEP  # no round more than needed
    assert ranks[0]["next_cursor"] == cursor + rounds * PER_STEP
    for rewards in ranks[0]["rewards"] + ranks[1]["rewards"]:
        assert 0.0 in rewards and 1.0 in rewards


def test_without_dynamic_sampling_every_group_is_kept_in_one_round():
    from xr_nemo.grpo.rollouts import prompt_order

    ranks = run_distributed(rollout_worker, 2, False, 0)
    assert [r["rounds"] for r in ranks] == [1, 1]
    assert ranks[0]["kept"] + ranks[1]["kept"] == prompt_order(PROMPTS, 3, 0, PER_STEP)
    assert ranks[0]["kept"] == ranks[0]["generated"] and len(ranks[0]["kept"]) == PER_STEP // 2
