"""`xr-nemo grpo`: from an SFT checkpoint to a policy trained with GRPO on verifiable rewards.

Each step: refit the engine from the live model, sample `rollout.n` completions for a batch of prompts,
score them, compute group advantages, the old (and reference) log-probabilities, and take
`grpo.updates_per_rollout` optimizer steps. Checkpoints carry the prompt cursor; rollouts are a pure
function of (weights, seed, cursor), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer import MegatronOptimizer
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.config.schema import GRPOConfig
from xr_nemo.conversion.dist_checkpoint import load_model_weights
from xr_nemo.conversion.in_memory import hf_weights
from xr_nemo.distributed import initialize, replica_group, shutdown
from xr_nemo.distributed.launch_env import read_launch_env
from xr_nemo.errors import ConfigError
from xr_nemo.generation.engine import Engine, Sampling, chat_stop_ids
from xr_nemo.grpo.algorithm import group_advantages
from xr_nemo.grpo.batch import Sample, minibatches, uniform_length
from xr_nemo.grpo.prompts import PromptSet, load_prompts
from xr_nemo.grpo.rollouts import RolloutWorker, StepRollouts
from xr_nemo.grpo.step import REPORT_WIDTH, logprob_step, policy_step
from xr_nemo.prompt_format import REASONING_SYSTEM_PROMPT
from xr_nemo.rewards.pool import RewardPool, RewardSpec
from xr_nemo.training.checkpoint import load_checkpoint, save_checkpoint
from xr_nemo.training.fault_tolerance import FaultTolerance
from xr_nemo.training.loop import resume_point, run_schedule, summed_report
from xr_nemo.training.metrics import MetricsWriter
from xr_nemo.training.optimizer import set_learning_rate
from xr_nemo.training.schedule import learning_rate
from xr_nemo.training.setup import (
    build_model,
    export_final,
    initial_checkpoint,
    params_dtype,
    prepare_run_dir,
    wrap_for_training,
)
from xr_nemo.training.stragglers import StragglerMonitor, report_stragglers

ENGINES = ("vllm", "reference")


def _say(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"[grpo] {message}", flush=True)


def _check(config: GRPOConfig) -> None:
    if config.rollout.engine not in ENGINES:
        raise ConfigError(
            f"unknown engine {config.rollout.engine!r}", where="rollout.engine", fix=f"one of {ENGINES}"
        )
    if config.rollout.n < 2:
        raise ConfigError(
            "GRPO needs at least 2 completions per prompt", where="rollout.n", fix="set rollout.n ≥ 2"
        )
    if config.grpo.loss_aggregation not in ("token", "sequence"):
        raise ConfigError("unknown loss aggregation", where="grpo.loss_aggregation", fix="token or sequence")
    if config.grpo.overlong not in ("keep", "mask"):
        raise ConfigError("unknown over-long policy", where="grpo.overlong", fix="keep or mask")
    if config.model.context_parallel > 1 and config.rollout.engine != "vllm":
        raise ConfigError(
            "context parallelism needs rollout.engine=vllm: the reference engine generates with the "
            "training model, which under context parallelism holds a slice of each sequence",
            where="model.context_parallel / rollout.engine",
            fix="set rollout.engine=vllm, or model.context_parallel=1",
        )
    dp = config.model.data_parallel_size(read_launch_env().world_size)
    if config.trainer.prompts_per_step < dp:
        raise ConfigError(
            f"{config.trainer.prompts_per_step} prompts per step cannot be split over {dp} data-parallel"
            " ranks",
            where="trainer.prompts_per_step",
            fix=f"use at least {dp}",
        )


def _engine(config: GRPOConfig, model, hf_dir: Path, pad_id: int, prompts: PromptSet):
    if config.rollout.engine == "reference":
        from xr_nemo.generation.reference import ReferenceEngine

        return ReferenceEngine(model, pad_id)
    from xr_nemo.generation.vllm_engine import VLLMEngine

    longest = max(len(ids) for ids in prompts.token_ids)
    return VLLMEngine(
        hf_dir,
        max_model_len=longest + config.rollout.max_new_tokens + 8,
        dtype=params_dtype(config.model.dtype),
        gpu_memory_utilization=config.rollout.gpu_memory_utilization,
        kv_cache_gib=config.rollout.kv_cache_gib,
        seed=config.trainer.seed + dist.get_rank(),
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
            len(scores),
        ],
        dtype=torch.float64,
    )
    dist.all_reduce(sums, group=parallel_state.get_data_parallel_group())
    reward, reward_sq, correct, formatted, length, cut, forced, timeouts, count = sums.tolist()
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
        system_prompt=data.system_prompt or REASONING_SYSTEM_PROMPT,
        max_prompt_length=data.max_prompt_length,
        on_error=data.on_error,
        max_samples=data.max_samples,
    )
    _say(f"{len(prompts)} prompts ({len(prompts.skipped)} skipped, {prompts.too_long} too long)")
    for example in prompts.skipped[:5]:
        _say(f"  skipped {example}")
    return prompts


@dataclass
class GRPOJob:
    config: GRPOConfig
    model: torch.nn.Module  # unwrapped: its sharded state dict is the checkpoint
    wrapped: torch.nn.Module
    optimizer: MegatronOptimizer
    reference: torch.nn.Module | None  # the frozen initial policy (KL), when grpo.kl_coef > 0
    engine: Engine
    worker: RolloutWorker
    prompts: PromptSet
    pad_id: int
    hf_dir: Path
    steps_per_epoch: int
    total_steps: int
    resume_from: Path | None


def _build_job(config: GRPOConfig, hf_dir: Path, pool: RewardPool | None) -> GRPOJob:
    run_dir = Path(config.run.dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    pad_id = tokenizer.pad_token_id or 0
    prompts = _load_prompts(config, tokenizer)

    torch.manual_seed(config.trainer.seed)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = build_model(hf_config, config.model)
    start_from = initial_checkpoint(config.model, run_dir, _say)
    resume_from = resume_point(config)
    if resume_from is None:
        load_model_weights(model, start_from)
    reference = None
    if config.grpo.kl_coef:
        reference = build_model(hf_config, config.model)
        load_model_weights(reference, start_from)
        reference.requires_grad_(False)
    wrapped, optimizer = wrap_for_training(model, config.model, config.optim)

    engine = _engine(config, model, hf_dir, pad_id, prompts)
    stop_ids = chat_stop_ids(tokenizer)
    sampling = Sampling(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        stop_token_ids=stop_ids,
        thinking_budget=config.rollout.thinking_budget,
        end_thinking_ids=tuple(tokenizer.encode("</think>", add_special_tokens=False)),
    )
    worker = RolloutWorker(
        prompts,
        engine,
        engine_is_model_parallel=config.rollout.engine == "reference",
        sampling=sampling,
        n=config.rollout.n,
        seed=config.trainer.seed,
        pool=pool,
        decode=lambda ids: tokenizer.decode([i for i in ids if i not in stop_ids], skip_special_tokens=False),
    )
    steps_per_epoch = max(1, len(prompts) // config.trainer.prompts_per_step)
    return GRPOJob(
        config=config,
        model=model,
        wrapped=wrapped,
        optimizer=optimizer,
        reference=reference,
        engine=engine,
        worker=worker,
        prompts=prompts,
        pad_id=pad_id,
        hf_dir=hf_dir,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.trainer.epochs,
        resume_from=resume_from,
    )


def _rollouts(job: GRPOJob, cursor: int) -> tuple[StepRollouts, float]:
    """This step's scored rollouts from freshly refit weights, and the refit time."""
    job.engine.wake()
    start = time.perf_counter()
    if job.config.rollout.engine == "vllm":
        job.engine.load_weights(hf_weights(job.model))
    refit_s = time.perf_counter() - start
    grpo = job.config.grpo
    rollouts = job.worker.collect(
        cursor, job.config.trainer.prompts_per_step, grpo.dynamic_sampling, grpo.max_sampling_rounds
    )
    job.engine.sleep()
    return rollouts, refit_s


def _train_on(
    job: GRPOJob, rollouts: StepRollouts, wrap_policy_step: Callable[[Callable], Callable]
) -> dict[str, float]:
    """Old/reference log-probabilities, then `grpo.updates_per_rollout` optimizer steps; the policy's
    forward step goes through `wrap_policy_step` (timing, drills)."""
    config = job.config
    multiple = config.model.sequence_multiple
    temperature = config.rollout.temperature or 1.0
    samples = _samples(config, rollouts, job.prompts)
    pipelined = parallel_state.get_pipeline_model_parallel_world_size() > 1
    length = uniform_length(samples, multiple) if pipelined else None
    updates = minibatches(
        samples,
        config.grpo.updates_per_rollout,
        config.trainer.micro_batch_size,
        job.pad_id,
        multiple,
        length,
        config.grpo.loss_aggregation,
    )
    every_batch = [batch for update in updates for batch in update]
    _attach_logprobs(partial(logprob_step, temperature), job.wrapped, every_batch, "old_logprobs")
    if job.reference is not None:
        _attach_logprobs(partial(logprob_step, temperature), job.reference, every_batch, "ref_logprobs")
    report = torch.zeros(REPORT_WIDTH, dtype=torch.float64)
    grad_norms = []
    for update in updates:
        job.wrapped.zero_grad_buffer()
        job.optimizer.zero_grad()
        step_fn = wrap_policy_step(partial(policy_step, config.grpo, temperature))
        outputs = run_schedule(step_fn, job.wrapped, update, False)
        report += summed_report(outputs, "report", REPORT_WIDTH)
        _, grad_norm, _ = job.optimizer.step()
        grad_norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
    loss_sum, loss_count, clipped, kl, token_entropy, mismatch, response_tokens = report.tolist()
    per_token = max(response_tokens, 1.0)
    return {
        "loss": loss_sum / max(loss_count, 1.0),
        "clip_fraction": clipped / per_token,
        "kl": kl / per_token,
        "entropy": token_entropy / per_token,
        "logprob_mismatch": mismatch / per_token,
        "grad_norm": sum(grad_norms) / len(grad_norms),
    }


def _generated_tokens(job: GRPOJob, rollouts: StepRollouts) -> float:
    """Completion tokens the step generated, over all ranks. Each rank's own engine generates a share of
    its replica's prompts; a model-parallel engine is run by the whole replica, so it counts once."""
    total = torch.tensor([float(rollouts.tokens)], dtype=torch.float64)
    group = parallel_state.get_data_parallel_group() if job.worker.engine_is_model_parallel else None
    dist.all_reduce(total, group=group)
    return float(total[0])


def _train(job: GRPOJob) -> int:
    """The step loop; returns the last step. Collective."""
    config, trainer = job.config, job.config.trainer
    run_dir = Path(config.run.dir)
    last_step = job.total_steps if trainer.max_steps is None else min(job.total_steps, trainer.max_steps)
    step, cursor, state = 0, 0, None
    if job.resume_from is not None:
        state = load_checkpoint(job.resume_from, job.model, job.optimizer)
        step, cursor = state["step"], state["prompt_cursor"]
        _say(f"resumed from {job.resume_from} at step {step}")
    fault_tolerance = FaultTolerance(config.fault_tolerance, state)
    stragglers = StragglerMonitor(config.stragglers)

    def wrap_policy_step(step_fn: Callable) -> Callable:
        return stragglers.timed(fault_tolerance.drilled(step_fn))

    is_writer = dist.get_rank() == 0
    metrics = MetricsWriter(run_dir, resumed_step=step) if is_writer else None
    bar = tqdm(
        total=last_step, initial=step, desc="grpo", unit="step", disable=not (is_writer and trainer.progress)
    )
    job.wrapped.train()
    while step < last_step:
        lr = learning_rate(step, config.optim.lr, config.scheduler, job.total_steps, job.steps_per_epoch)
        set_learning_rate(job.optimizer, lr)
        step_start = time.perf_counter()
        rollouts, refit_s = _rollouts(job, cursor)
        cursor = rollouts.next_cursor
        train_start = time.perf_counter()
        stragglers.add(rollouts.generation_s)
        trained = _train_on(job, rollouts, wrap_policy_step)
        train_s = time.perf_counter() - train_start
        step += 1
        tokens = _generated_tokens(job, rollouts)
        values = {
            **_rollout_metrics(rollouts),
            **trained,
            "lr": lr,
            "prompt_cursor": cursor,
            "time_generation_s": rollouts.generation_s,
            "time_refit_s": refit_s,
            "time_reward_s": rollouts.reward_s,
            "time_train_s": train_s,
            "step_time_s": time.perf_counter() - step_start,
            "rollout_tokens": tokens,
            "rollout_tokens_per_s": tokens / max(rollouts.generation_s, 1e-9),
            **report_stragglers(stragglers.after_step(step), "grpo"),
        }
        if metrics is not None:
            metrics.write(step, values)
        bar.set_postfix(reward=f"{values['reward_mean']:.3f}", len=f"{values['response_length']:.0f}")
        bar.update()
        every = config.checkpoint.every_steps
        if (every and step % every == 0) or (step == last_step and config.checkpoint.at_end):
            train_state = {
                "step": step,
                "prompt_cursor": cursor,
                "epoch": cursor // len(job.prompts),
                **fault_tolerance.train_state(),
            }
            save_checkpoint(
                run_dir, step, job.model, job.optimizer, train_state, job.hf_dir, config.checkpoint.keep_last
            )
        fault_tolerance.after_step(step)
    fault_tolerance.close()
    bar.close()
    if metrics is not None:
        metrics.close()
    return step


def run_grpo(config: GRPOConfig) -> Path:
    """Train; return the last checkpoint's directory. Collective: every rank calls it."""
    run_dir = Path(config.run.dir)
    _check(config)
    initialize(config.model, seed=config.trainer.seed)
    pool, job = None, None
    try:
        hf_dir = prepare_run_dir(config)
        if dist.get_rank(replica_group()) == 0:
            reward = config.reward
            spec = RewardSpec(reward.correctness, reward.format_weight)
            pool = RewardPool(spec, workers=reward.workers, timeout_s=reward.timeout_s)
        job = _build_job(config, hf_dir, pool)
        return export_final(run_dir, _train(job), config.export, _say)
    finally:
        if pool is not None:
            pool.close()
        if job is not None:
            job.engine.close()
        shutdown()
