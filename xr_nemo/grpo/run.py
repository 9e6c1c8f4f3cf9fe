"""`xr-nemo grpo`: from an SFT checkpoint to a policy trained with GRPO on verifiable rewards.

Each step: refit the engine from the live model, sample `rollout.n` completions for a batch of prompts,
score them, compute group advantages, the reference (and, with several updates, the old policy's)
log-probabilities, and take `grpo.updates_per_rollout` optimizer steps. Checkpoints carry the prompt
cursor; rollouts are a pure function of (weights, seed, cursor), so a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.config.bounds import check_writable_directory, validate
from xr_nemo.config.schema import GRPOAlgorithmConfig, GRPOConfig
from xr_nemo.conversion.dist_checkpoint import load_model_weights
from xr_nemo.distributed import initialize, replica_group, shutdown
from xr_nemo.distributed.devices import all_reduce_host
from xr_nemo.distributed.launch_env import read_launch_env
from xr_nemo.errors import ConfigError
from xr_nemo.generation.engine import Engine, Sampling
from xr_nemo.generation.factory import build_engine
from xr_nemo.grpo.algorithm import group_advantages
from xr_nemo.grpo.batch import Sample, minibatches, uniform_length
from xr_nemo.grpo.prompts import PromptSet, check_schema, load_prompts
from xr_nemo.grpo.rollouts import RolloutWorker, StepRollouts
from xr_nemo.grpo.step import REPORT_WIDTH, logprob_step, policy_step
from xr_nemo.io.run_lock import release_run_dir
from xr_nemo.models.dtype import params_dtype
from xr_nemo.rewards.pool import RewardPool, RewardSpec
from xr_nemo.training.loop import Policy, Reports, StepHooks, StepPlan, Update, run_schedule, say, train
from xr_nemo.training.setup import build_model, build_policy, export_final, prepare_run_dir


def check_config(config: GRPOConfig) -> None:
    """What the config's own checks (`validate`, run when it was made) cannot see: the file system, the
    task registry and the world size. `validate` runs again for a config built in Python rather than by
    overrides."""
    validate(config)
    check_writable_directory(config.run.dir, "run.dir")
    check_schema(config.data.schema)
    dp = config.parallel.data_parallel_size(read_launch_env().world_size)
    if config.trainer.prompts_per_step < dp:
        raise ConfigError(
            f"{config.trainer.prompts_per_step} prompts per step cannot be split over {dp} data-parallel"
            " ranks",
            where="trainer.prompts_per_step",
            fix=f"use at least {dp}",
        )


def _samples(config: GRPOConfig, rollouts: StepRollouts, prompts: PromptSet) -> list[Sample]:
    samples = []
    for group in rollouts.kept:
        rewards = torch.tensor(
            [
                s.reward - (0.0 if c.finished else config.grpo.overlong_penalty)
                for s, c in zip(group.scores, group.completions, strict=True)
            ]
        )
        advantages = group_advantages(rewards, len(rewards), config.grpo.normalize_std)
        for completion, advantage in zip(group.completions, advantages.tolist(), strict=True):
            carries = completion.finished or config.grpo.overlong == "keep"
            samples.append(Sample(prompts.token_ids[group.prompt_index], completion, advantage, carries))
    return samples


def needs_old_policy_pass(grpo: GRPOAlgorithmConfig) -> bool:
    """Whether π_old's log-probabilities need a forward pass of their own before the updates: only when
    later updates of a rollout batch start from weights the earlier ones moved. With one update, π_old
    is the policy being updated, and the loss takes its log-probabilities detached
    (`step.old_logprobs`)."""
    return grpo.updates_per_rollout > 1


def _attach_logprobs(step_fn, model, batches: list, key: str) -> None:
    """Run a forward-only pass and store each micro-batch's label log-probabilities under `key` (on the
    last pipeline stage, where the loss is computed)."""
    with torch.no_grad():
        outputs = run_schedule(step_fn, model, batches, forward_only=True)
    if parallel_state.is_pipeline_last_stage():
        for batch, output in zip(batches, outputs, strict=True):
            batch[key] = output["logprobs"]


def _rollout_metrics(rollouts: StepRollouts) -> dict[str, float]:
    scores = [(s, c) for g in rollouts.generated for s, c in zip(g.scores, g.completions, strict=True)]
    sums = torch.tensor(
        [
            sum(s.reward for s, _ in scores),
            sum(s.reward**2 for s, _ in scores),
            sum(s.correct for s, _ in scores),
            sum(s.format for s, _ in scores),
            sum(len(c.token_ids) for _, c in scores),
            sum(not c.finished for _, c in scores),
            sum(c.forced_exit for _, c in scores),
            sum(s.timed_out for s, _ in scores),
            sum(s.gold_unreadable for s, _ in scores),
            len(scores),
        ],
        dtype=torch.float64,
    )
    sums = all_reduce_host(sums, parallel_state.get_data_parallel_group())
    reward, reward_sq, correct, formatted, length, cut, forced, timeouts, unreadable, count = sums.tolist()
    mean = reward / count
    return {
        "reward_mean": mean,
        "reward_std": math.sqrt(max(0.0, reward_sq / count - mean**2)),
        "accuracy": correct / count,
        "format": formatted / count,
        "response_length": length / count,
        "truncated_fraction": cut / count,
        "forced_exit_fraction": forced / count,
        "reward_timeouts": timeouts,
        "gold_unreadable_fraction": unreadable / count,  # math-verify could not read the gold
        "informative_groups": rollouts.informative / max(1, rollouts.groups_total),
        "sampling_rounds": rollouts.rounds,
    }


def _load_prompts(config: GRPOConfig, tokenizer) -> PromptSet:
    data = config.data
    prompts = load_prompts(
        data.train,
        data.split,
        tokenizer,
        schema=data.schema,
        system_prompt=data.system_prompt,
        template=data.template,
        max_prompt_length=data.max_prompt_length,
        on_error=data.on_error,
        max_samples=data.max_samples,
    )
    say("grpo", f"{len(prompts)} prompts ({len(prompts.skipped)} skipped, {prompts.too_long} too long)")
    for example in prompts.skipped[:5]:
        say("grpo", f"  skipped {example}")
    return prompts


def _reference_model(config: GRPOConfig, hf_dir: Path, policy: Policy) -> torch.nn.Module | None:
    """The frozen initial policy the KL term is taken against, when `grpo.kl_coef` > 0."""
    if not config.grpo.kl_coef:
        return None
    reference = build_model(AutoConfig.from_pretrained(hf_dir), config)
    load_model_weights(reference, policy.initial_weights)
    return reference.requires_grad_(False)


def _rollout_worker(
    config: GRPOConfig, hf_dir: Path, tokenizer, policy: Policy, prompts: PromptSet, pool: RewardPool | None
) -> RolloutWorker:
    rollout = config.rollout
    engine = build_engine(
        rollout,
        hf_dir,
        dtype=params_dtype(config.model.dtype),
        max_model_len=max(len(ids) for ids in prompts.token_ids) + rollout.max_new_tokens + 8,
        seed=config.trainer.seed + dist.get_rank(),
        model=policy.model,
        pad_id=tokenizer.pad_token_id or 0,
    )
    sampling = Sampling.of(rollout, tokenizer)
    stop_ids = sampling.stop_token_ids
    return RolloutWorker(
        prompts,
        engine,
        sampling=sampling,
        n=rollout.n,
        seed=config.trainer.seed,
        pool=pool,
        decode=lambda ids: tokenizer.decode([i for i in ids if i not in stop_ids], skip_special_tokens=False),
    )


@dataclass
class RolloutStep(StepPlan):
    """A step's updates, with what its metrics need from the rollouts behind them."""

    rollouts: StepRollouts
    refit_s: float
    batching_s: float  # making the micro-batches and their log-probability passes (training time)


def _update_metrics(report: torch.Tensor) -> dict[str, float]:
    """The policy loss's summed report (`step.policy_step`), as means."""
    loss_sum, loss_count, clipped, kl, token_entropy, mismatch, response_tokens = report.tolist()
    per_token = max(response_tokens, 1.0)
    return {
        "loss": loss_sum / max(loss_count, 1.0),
        "clip_fraction": clipped / per_token,
        "kl": kl / per_token,
        "entropy": token_entropy / per_token,
        "logprob_mismatch": mismatch / per_token,
    }


class GRPOStage:
    """Each step: refit the engine from the live model, sample and score a batch of prompts' groups,
    compute advantages and the log-probabilities the loss compares against, and hand the loop
    `grpo.updates_per_rollout` updates. Its data are prompts, counted at the prompt cursor (dynamic
    sampling's extra rounds included); it resumes from there."""

    name = "grpo"
    summed_reports: ClassVar[Mapping[str, int]] = {"report": REPORT_WIDTH}

    def __init__(
        self,
        config: GRPOConfig,
        policy: Policy,
        reference: torch.nn.Module | None,
        worker: RolloutWorker,
        pad_id: int,
    ) -> None:
        self.config, self.policy, self.reference, self.worker = config, policy, reference, worker
        self.pad_id = pad_id
        self.prompts = worker.prompts
        self.epoch_size = len(self.prompts)
        # as if every step drew `prompts_per_step`: dynamic sampling's extra rounds end an epoch sooner
        self.planned_steps_per_epoch = max(1, len(self.prompts) // config.trainer.prompts_per_step)
        self.cursor = 0

    @property
    def engine(self) -> Engine:
        return self.worker.engine

    def _rollouts(self) -> tuple[StepRollouts, float]:
        """This step's scored rollouts from freshly refit weights, and the refit time. The engine wakes
        its weights, takes the new ones, and only then its KV cache, whose memory stays free while the new
        tensors are gathered; it sleeps again before training needs the memory."""
        self.engine.wake_weights()
        start = time.perf_counter()
        self.engine.refit(self.policy.model)
        refit_s = time.perf_counter() - start
        self.engine.wake_cache()
        grpo = self.config.grpo
        rollouts = self.worker.collect(
            self.cursor, self.config.trainer.prompts_per_step, grpo.dynamic_sampling, grpo.max_sampling_rounds
        )
        self.engine.sleep(self.config.rollout.sleep_level)
        return rollouts, refit_s

    def _updates(self, rollouts: StepRollouts) -> list[Update]:
        """`grpo.updates_per_rollout` updates of the rollouts' samples, their micro-batches carrying the
        old (when `needs_old_policy_pass`) and reference log-probabilities."""
        config, policy = self.config, self.policy
        multiple = config.sequence_multiple
        temperature = config.rollout.temperature or 1.0
        samples = _samples(config, rollouts, self.prompts)
        n = config.rollout.n
        where = [position * n + j for position in rollouts.kept_positions for j in range(n)]
        pipelined = parallel_state.get_pipeline_model_parallel_world_size() > 1
        length = uniform_length(samples, multiple) if pipelined else None
        updates = minibatches(
            samples,
            config.grpo.updates_per_rollout,
            config.trainer.micro_batch_size,
            self.pad_id,
            multiple,
            length,
            config.grpo.loss_aggregation,
            positions=(where, rollouts.kept_total * n),
        )
        every_batch = [batch for update in updates for batch in update]
        if needs_old_policy_pass(config.grpo):
            _attach_logprobs(partial(logprob_step, temperature), policy.wrapped, every_batch, "old_logprobs")
        if self.reference is not None:
            _attach_logprobs(partial(logprob_step, temperature), self.reference, every_batch, "ref_logprobs")
        forward = partial(policy_step, config.grpo, temperature)
        return [Update(forward, update) for update in updates]

    def _generated_tokens(self, rollouts: StepRollouts) -> float:
        """Completion tokens the step generated, over all ranks. Each rank's own engine generates a share
        of its replica's prompts; a collective engine is run by the whole replica, so it counts once."""
        total = torch.tensor([float(rollouts.tokens)], dtype=torch.float64)
        group = parallel_state.get_data_parallel_group() if self.engine.collective else None
        return float(all_reduce_host(total, group)[0])

    def prepare(self, step: int, hooks: StepHooks) -> RolloutStep:
        rollouts, refit_s = self._rollouts()
        consumed, self.cursor = rollouts.next_cursor - self.cursor, rollouts.next_cursor
        hooks.add_time(rollouts.generation_s)
        start = time.perf_counter()
        updates = self._updates(rollouts)
        return RolloutStep(updates, consumed, rollouts, refit_s, time.perf_counter() - start)

    def metrics(self, step: int, plan: RolloutStep, reports: Reports) -> dict[str, float]:
        rollouts = plan.rollouts
        tokens = self._generated_tokens(rollouts)
        return {
            **_rollout_metrics(rollouts),
            **_update_metrics(reports.sums["report"]),
            "prompt_cursor": rollouts.next_cursor,
            "time_generation_s": rollouts.generation_s,
            "time_refit_s": plan.refit_s,
            "time_reward_s": rollouts.reward_s,
            "time_train_s": plan.batching_s + reports.seconds,
            "rollout_tokens": tokens,
            "rollout_tokens_per_s": tokens / max(rollouts.generation_s, 1e-9),
        }

    def progress(self, values: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{values['reward_mean']:.3f}", "len": f"{values['response_length']:.0f}"}

    def state(self) -> dict[str, Any]:
        return {"consumed_samples": self.cursor}

    def restore(self, state: dict[str, Any]) -> int:
        # checkpoints written before the loop was shared name the cursor `prompt_cursor`
        self.cursor = state["consumed_samples"] if "consumed_samples" in state else state["prompt_cursor"]
        return self.cursor


def run_grpo(config: GRPOConfig) -> Path:
    """Train; return the last checkpoint's directory. Collective: every rank calls it."""
    check_config(config)
    initialize(config.parallel, seed=config.trainer.seed)
    pool, stage = None, None
    try:
        hf_dir = prepare_run_dir(config, "grpo")
        if dist.get_rank(replica_group()) == 0:
            reward = config.reward
            spec = RewardSpec(reward.correctness, reward.format_weight)
            pool = RewardPool(spec, workers=reward.workers, timeout_s=reward.timeout_s)
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        prompts = _load_prompts(config, tokenizer)
        policy = build_policy(config, hf_dir, partial(say, "grpo"))
        reference = _reference_model(config, hf_dir, policy)
        worker = _rollout_worker(config, hf_dir, tokenizer, policy, prompts, pool)
        stage = GRPOStage(config, policy, reference, worker, tokenizer.pad_token_id or 0)
        last_step = train(config, policy, stage)
        return export_final(Path(config.run.dir), last_step, config.export, partial(say, "grpo"))
    finally:
        if pool is not None:
            pool.close()
        if stage is not None:
            stage.engine.close()
        release_run_dir(config.run.dir)  # held by rank 0; nothing to do elsewhere
        shutdown()
