"""GRPO end to end on the tiny model. A short SFT teaches the answer format with a coin-flip answer
("5" or "7" to "What is 2 + 3?"); GRPO with the math reward must then raise the mean reward — with the
vLLM engine (refit in memory every step, its log-probabilities equal to Megatron's) and with the
reference engine at TP=2 — and a run killed with -9 resumes to the uninterrupted run's numbers."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

from xr_nemo.distributed.local_launch import run_distributed

from helpers import processes

pytestmark = pytest.mark.slow

QUESTION, ANSWER, WRONG = "What is 2 + 3?", "5", "7"


def _stage_worker(stage: str, overrides: list[str]) -> list[dict] | None:
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.training.metrics import read_metrics

    config = apply_overrides(load_recipe("tiny_cpu", stage), overrides)
    if stage == "sft":
        from xr_nemo.sft.run import run_sft

        run_sft(config)
    else:
        from xr_nemo.grpo.run import run_grpo

        run_grpo(config)
    return read_metrics(config.run.dir) if int(os.environ["RANK"]) == 0 else None


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    root = tmp_path_factory.mktemp("grpo")
    hf_dir = build_tiny_qwen25_vl(root / "hf", TinyQwen25VLSpec(num_kv_heads=2))
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    rng = random.Random(0)
    with open(root / "sft.jsonl", "w") as out:
        for _ in range(64):
            messages = [
                {"role": "user", "content": QUESTION},
                {
                    "role": "assistant",
                    "content": f"<think>Add.</think><answer>{rng.choice([ANSWER, WRONG])}</answer>",
                },
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    with open(root / "prompts.jsonl", "w") as out:
        for _ in range(16):
            out.write(json.dumps({"prompt": QUESTION, "answer": ANSWER}) + "\n")
    sft = [
        f"run.dir={root / 'sft'}",
        f"model.hf_dir={hf_dir}",
        f"model.checkpoint={checkpoint}",
        f"data.train={root / 'sft.jsonl'}",
        "data.packing=false",
        "trainer.epochs=8",  # the targets in the paper's format (<think>…</think> <answer>…</answer>)
        "trainer.global_batch_size=8",
        "scheduler.name=constant",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
    ]
    run_distributed(_stage_worker, 1, "sft", sft)
    return root


def grpo_args(root, name, *overrides):
    return [
        f"run.dir={root / name}",
        f"init.checkpoint={root / 'sft'}",
        f"data.train={root / 'prompts.jsonl'}",
        "trainer.prompts_per_step=4",
        "rollout.n=8",
        "rollout.max_new_tokens=24",  # the SFT target, <think>…</answer><|im_end|>, is 19 tokens
        "optim.lr=5e-4",
        "scheduler.warmup_steps=3",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        *overrides,
    ]


def _rises(rows: list[dict]) -> tuple[float, float]:
    rewards = [row["reward_mean"] for row in rows]
    return sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4


@pytest.mark.vllm
def test_vllm_grpo_raises_the_reward_and_refit_matches_megatron(sft_run):
    pytest.importorskip("vllm")
    rows = run_distributed(_stage_worker, 1, "grpo", grpo_args(sft_run, "vllm", "trainer.epochs=4"))[0]
    assert len(rows) == 16
    first, last = _rises(rows)
    assert last > first + 0.15, [row["reward_mean"] for row in rows]
    # the engine samples from weights refit in memory each step; its log-probabilities of the sampled
    # tokens equal the training model's (the weights changed every step)
    assert max(row["logprob_mismatch"] for row in rows) < 1e-4
    assert all(row["time_refit_s"] > 0 for row in rows)
    # one update per rollout batch: the ratio is 1 at the update, so the clip never binds
    assert all(row["clip_fraction"] == 0 for row in rows)


def test_reference_engine_at_tp2_raises_the_reward(sft_run):
    args = grpo_args(
        sft_run, "reference-tp2", "rollout.engine=reference", "parallel.tp=2", "trainer.epochs=4"
    )
    rows = run_distributed(_stage_worker, 2, "grpo", args)[0]
    first, last = _rises(rows)
    assert last > first + 0.15, [row["reward_mean"] for row in rows]
    assert max(row["logprob_mismatch"] for row in rows) < 1e-4
    assert all(row["clip_fraction"] == 0 for row in rows)  # one update per rollout batch


def _cli(root, name, engine, *overrides):
    args = grpo_args(root, name, f"rollout.engine={engine}", "trainer.epochs=1", "checkpoint.every_steps=2")
    return [sys.executable, "-m", "xr_nemo.cli", "grpo", *args, *overrides]


@pytest.mark.parametrize("engine", ["reference", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(sft_run, engine):
    """The prompt cursor and the per-completion seeds are all a resumed run needs: the rollouts, rewards
    and updates after the restart are the uninterrupted run's, bit for bit."""
    from xr_nemo.training.metrics import read_metrics

    if engine == "vllm":
        pytest.importorskip("vllm")
    whole_dir, killed_dir = sft_run / f"whole-{engine}", sft_run / f"killed-{engine}"
    subprocess.run(_cli(sft_run, whole_dir.name, engine), check=True, capture_output=True)
    whole = read_metrics(whole_dir)
    assert len(whole) == 4

    victim = processes.start(
        _cli(sft_run, killed_dir.name, engine), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step_2").exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before step 2"
        time.sleep(0.05)
    processes.end_group(victim)  # kill -9, the run and its helpers
    victim.wait()
    assert len(read_metrics(killed_dir)) < 4

    subprocess.run(
        _cli(sft_run, killed_dir.name, engine, "trainer.resume=auto"), check=True, capture_output=True
    )
    resumed = read_metrics(killed_dir)
    keys = ("reward_mean", "loss", "kl", "entropy", "response_length", "prompt_cursor", "grad_norm")
    assert [[row[k] for k in keys] for row in resumed] == [[row[k] for k in keys] for row in whole]


def test_prompts_that_dynamic_sampling_draws_count_toward_the_epoch(sft_run):
    """With two completions per prompt, about half the groups have equal rewards: dynamic sampling drops
    them and draws more prompts, which count toward the epoch like the kept ones. Two epochs of 16
    prompts, planned as 8 steps of 4, end when the cursor passes 32, in fewer steps; the epoch turns
    where the data does."""
    args = grpo_args(
        sft_run,
        "dynamic",
        "rollout.engine=reference",
        "rollout.n=2",
        "trainer.epochs=2",
        "grpo.dynamic_sampling=true",
    )
    rows = run_distributed(_stage_worker, 1, "grpo", args)[0]
    cursors = [row["prompt_cursor"] for row in rows]
    rounds = [row["sampling_rounds"] for row in rows]
    assert cursors == [4 * sum(rounds[: i + 1]) for i in range(len(rows))]
    assert len(rows) < 8 and cursors[-1] >= 32 > cursors[-2]
    assert [row["epoch"] for row in rows] == [before // 16 for before in [0, *cursors[:-1]]]


def test_two_data_parallel_ranks_reproduce_the_single_process_step(sft_run):
    """Rollouts are a function of (weights, seed, prompt position) and the loss is normalised over the
    tokens of the whole step, so splitting a step over two ranks changes nothing — with dynamic
    sampling, two optimizer steps per rollout batch and the KL term on. (Later steps start from weights
    that differ in the last bits, so one sampled token in thousands may differ; only the first step is
    compared.)"""
    common = [
        "rollout.engine=reference",
        "trainer.max_steps=2",
        "grpo.dynamic_sampling=true",
        "grpo.updates_per_rollout=2",
        "grpo.kl_coef=0.05",
    ]
    single = run_distributed(_stage_worker, 1, "grpo", grpo_args(sft_run, "dp1", *common))[0]
    split_args = grpo_args(sft_run, "dp2", *common, "stragglers.report_every=1")
    split = run_distributed(_stage_worker, 2, "grpo", split_args)[0]
    assert len(single) == len(split) == 2
    exact = (
        "reward_mean",
        "response_length",
        "sampling_rounds",
        "informative_groups",
        "prompt_cursor",
        "rollout_tokens",
    )
    assert [split[0][k] for k in exact] == [single[0][k] for k in exact]
    for key in ("loss", "kl", "entropy", "grad_norm", "clip_fraction"):
        assert split[0][key] == pytest.approx(single[0][key], abs=1e-5), key
    assert single[0]["kl"] > 0  # the second update of the step already moved away from the reference
    # the second update sees the first one's weights against the same old log-probabilities: the clip binds
    assert single[0]["clip_fraction"] > 0
    # each step compared the two ranks' generation and policy forward times
    assert all(
        row["straggler_slowest_ratio"] >= 1 and row["straggler_slowest_rank"] in (0, 1) for row in split
    )


# the entropy bonus on: its vocabulary-parallel gradient must match the single process's too
PARITY_STEPS = ["trainer.max_steps=2", "grpo.entropy_coef=0.01"]


@pytest.fixture(scope="module")
def vllm_single_process(sft_run):
    pytest.importorskip("vllm")
    return run_distributed(_stage_worker, 1, "grpo", grpo_args(sft_run, "vllm-single", *PARITY_STEPS))[0]


@pytest.mark.vllm
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2", "parallel.cp=2"])
def test_vllm_rollouts_at_tp2_pp2_and_cp2_follow_the_single_process_step(
    sft_run, vllm_single_process, layout
):
    """Each rank runs its own engine, refit from the gathered (TP) and broadcast (PP) weights; micro-batches
    share one padded length under pipelining, and each context-parallel rank trains on half of every
    sequence. The first step's rollouts equal the single-process run's and the update matches it."""
    name = layout.split(".")[1].replace("=", "")
    args = grpo_args(sft_run, f"vllm-{name}", *PARITY_STEPS, layout)
    _assert_follows_until_the_first_update(
        vllm_single_process, run_distributed(_stage_worker, 2, "grpo", args)[0]
    )


@pytest.mark.vllm
def test_vllm_cp2_with_sequence_means_follows_the_single_process_step(sft_run):
    """Sequence-level means under context parallelism, end to end. (Here every response lies in one
    rank's chunks; `tests/test_context_parallel.py` checks responses that cross them.)"""
    pytest.importorskip("vllm")
    means = [*PARITY_STEPS, "grpo.loss_aggregation=sequence"]
    single = run_distributed(_stage_worker, 1, "grpo", grpo_args(sft_run, "means-single", *means))[0]
    split_args = grpo_args(sft_run, "means-cp2", *means, "parallel.cp=2")
    _assert_follows_until_the_first_update(single, run_distributed(_stage_worker, 2, "grpo", split_args)[0])


def _assert_follows_until_the_first_update(single: list[dict], split: list[dict]) -> None:
    first_update = next(i for i, row in enumerate(single) if row["grad_norm"] > 0)
    exact = ("reward_mean", "response_length", "informative_groups", "rollout_tokens")
    for i in range(first_update + 1):  # until the first update, the weights are the same bit for bit
        assert [split[i][k] for k in exact] == [single[i][k] for k in exact], i
    for key in ("loss", "entropy", "grad_norm"):
        assert split[first_update][key] == pytest.approx(single[first_update][key], abs=1e-5), key
    assert max(row["logprob_mismatch"] for row in split) < 1e-4
