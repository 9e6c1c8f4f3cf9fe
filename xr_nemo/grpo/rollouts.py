"""One step's rollouts across ranks: which prompts, who generates them, who scores them, which groups
are kept.

- Prompts: a seeded permutation per epoch, read at a global cursor, so the prompts of every step are a
  pure function of (seed, cursor) — resume needs only the cursor.
- Each data-parallel replica takes a contiguous share of a round's prompts. Inside the replica, its
  ranks (tensor-, context- and pipeline-parallel) split that share between their engines (vLLM) or
  generate it together (the reference engine is itself tensor-parallel); results are all-gathered in
  the replica.
- The replica's first rank scores the completions in the reward workers and broadcasts the scores.
- Dynamic sampling keeps only groups whose rewards differ, in a global order (round, replica, prompt),
  sampling more rounds until the step has its prompts' worth of groups or the round limit is hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from xr_nemo.distributed import replica_group
from xr_nemo.generation.engine import Completion, Engine, Sampling, generate
from xr_nemo.grpo.algorithm import informative_groups
from xr_nemo.grpo.prompts import PromptSet
from xr_nemo.rewards.pool import RewardPool, RewardTask, Score


@dataclass
class Group:
    prompt_index: int
    completions: list[Completion]
    scores: list[Score]


@dataclass
class StepRollouts:
    kept: list[Group]  # this replica's groups to train on
    kept_positions: list[int]  # each kept group's position among the kept groups of all replicas
    generated: list[Group]  # everything this replica generated (for metrics)
    next_cursor: int
    rounds: int
    kept_total: int  # over all replicas
    generation_s: float = 0.0
    reward_s: float = 0.0
    tokens: int = 0  # completion tokens this rank's engine generated
    informative: int = 0  # over all replicas
    groups_total: int = 0


def prompt_order(num_prompts: int, seed: int, cursor: int, count: int) -> list[int]:
    """Prompt indices at global positions cursor … cursor+count-1 (each epoch its own permutation)."""
    indices = []
    for position in range(cursor, cursor + count):
        epoch, offset = divmod(position, num_prompts)
        indices.append(int(np.random.default_rng([seed, epoch]).permutation(num_prompts)[offset]))
    return indices


def _share(items: list, parts: int, index: int) -> tuple[int, list]:
    """(offset, items) of the `index`-th of `parts` contiguous shares."""
    bounds = np.linspace(0, len(items), parts + 1).astype(int)
    return int(bounds[index]), items[bounds[index] : bounds[index + 1]]


def _gather_in_replica(values: list) -> list:
    group = replica_group()
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, values, group=group)
    return [v for part in gathered for v in part]


def _broadcast_in_replica(value):
    group = replica_group()
    holder = [value]
    dist.broadcast_object_list(holder, src=dist.get_process_group_ranks(group)[0], group=group)
    return holder[0]


@dataclass
class RolloutWorker:
    prompts: PromptSet
    engine: Engine
    sampling: Sampling
    n: int
    seed: int
    pool: RewardPool | None  # only on a replica's first rank
    decode: Callable[[list[int]], str]

    def _generate(self, indices: list[int], seed: int) -> tuple[list[list[Completion]], int]:
        if self.engine.collective:
            offset, mine = 0, indices
        else:
            group = replica_group()
            offset, mine = _share(indices, dist.get_world_size(group), dist.get_rank(group))
        prompts = [self.prompts.token_ids[i] for i in mine]
        completions = (
            generate(self.engine, prompts, self.n, seed + offset * self.n, self.sampling) if mine else []
        )
        tokens = sum(len(c.token_ids) for group in completions for c in group)
        if self.engine.collective:
            return completions, tokens
        return _gather_in_replica(completions), tokens

    def _score(self, indices: list[int], completions: list[list[Completion]]) -> list[list[Score]]:
        scores = None
        if self.pool is not None:
            tasks = [
                RewardTask(
                    self.decode(c.token_ids), self.prompts.items[i].answer, self.prompts.items[i].options
                )
                for i, group in zip(indices, completions, strict=True)
                for c in group
            ]
            flat = self.pool.score(tasks)
            scores = [flat[k * self.n : (k + 1) * self.n] for k in range(len(indices))]
        return _broadcast_in_replica(scores)

    def collect(self, cursor: int, prompts_per_step: int, dynamic: bool, max_rounds: int) -> StepRollouts:
        """One step's groups, starting at prompt position `cursor`. Collective over all ranks."""
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        result = StepRollouts([], [], [], cursor, 0, 0)
        while True:
            round_indices = prompt_order(len(self.prompts), self.seed, result.next_cursor, prompts_per_step)
            offset, mine = _share(round_indices, dp_size, dp_rank)
            seed = (self.seed * 1_000_003 + result.next_cursor) * self.n + offset * self.n
            start = time.perf_counter()
            completions, tokens = self._generate(mine, seed % (2**62))
            result.generation_s += time.perf_counter() - start
            result.tokens += tokens
            start = time.perf_counter()
            scores = self._score(mine, completions)
            result.reward_s += time.perf_counter() - start
            groups = [Group(i, c, s) for i, c, s in zip(mine, completions, scores, strict=True)]
            result.generated += groups
            result.next_cursor += prompts_per_step
            result.rounds += 1
            informative = [self._informative(g) for g in groups]
            everyone: list = [None] * dp_size
            dist.all_gather_object(everyone, informative, group=parallel_state.get_data_parallel_group())
            result.groups_total += sum(len(flags) for flags in everyone)
            result.informative += sum(sum(flags) for flags in everyone)
            keep = everyone if dynamic else [[True] * len(flags) for flags in everyone]
            room = prompts_per_step - result.kept_total
            before_me = sum(sum(flags) for flags in keep[:dp_rank])
            mine_kept = [g for g, k in zip(groups, keep[dp_rank], strict=True) if k]
            taken = mine_kept[: max(0, room - before_me)]
            first = result.kept_total + before_me
            result.kept += taken
            result.kept_positions += range(first, first + len(taken))
            result.kept_total += min(room, sum(sum(flags) for flags in keep))
            if not dynamic or result.kept_total >= prompts_per_step or result.rounds >= max_rounds:
                return result

    def _informative(self, group: Group) -> bool:
        rewards = torch.tensor([s.reward for s in group.scores])
        return bool(informative_groups(rewards, len(rewards))[0])
