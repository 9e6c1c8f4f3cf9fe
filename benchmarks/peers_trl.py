"""TRL's side of the measured runs: `SFTTrainer` and `GRPOTrainer` (run under build/peers-venv, where trl
imports), on the causal-LM twin of the built model, set to what our side is set to (seed, optimizer,
constant lr, no checkpoints, float32 on CPU)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from peers_build import SEED, Shape
from peers_loss import algorithm_defaults
from peers_measure import MemoryPhases, step_clock, timed


def _shared_args(output_dir: Path, lr: float, recompute: bool) -> dict[str, Any]:
    """The `TrainingArguments` both trainers take alike: our optimizer settings (AdamW, constant lr, no
    weight decay, grad-norm clip 1.0), seed, fp32 on CPU, a log line per step, nothing saved."""
    return dict(
        output_dir=str(output_dir),
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=SEED,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=recompute,
        model_init_kwargs={"dtype": "float32"},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def sft(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """TRL's `SFTTrainer` on the same samples: packing (BFD, padding-free), one packed row per step."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    class Timed(SFTTrainer):
        """Counts the tokens (non-padding positions) and samples of every micro-batch it trains on."""

        counted: list[tuple[int, int]]

        def training_step(self, model, inputs, num_items_in_batch=None):
            positions = inputs["position_ids"]
            self.counted.append((int(positions.numel()), int((positions == 0).sum())))
            return super().training_step(model, inputs, num_items_in_batch)

    phases = MemoryPhases()
    clock = step_clock(phases)
    args = SFTConfig(
        **_shared_args(work / "trl_sft", shape.sft_lr, recompute),
        max_length=shape.seq_length,
        packing=True,
        packing_strategy="bfd",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        eval_strategy="no",
        per_device_eval_batch_size=64,
    )
    data = load_dataset("json", data_files={"train": built["train_trl"], "heldout": built["heldout_trl"]})
    trainer = Timed(
        model=built["lm_dir"],
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["heldout"],
        callbacks=[clock],
    )
    trainer.counted = []
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    heldout = trainer.evaluate()["eval_loss"]
    steps = [
        {"tokens": tokens, "samples": samples, "seconds": seconds, "loss": loss}
        for (tokens, samples), seconds, loss in zip(trainer.counted, clock.seconds, losses, strict=True)
    ]
    return {"steps": steps, "heldout_loss": heldout, **phases.result()}


def _prompt_texts(hf_dir: str, prompts_file: str) -> tuple[list[dict[str, str]], int]:
    """Our rendered prompts (the paper's template, the chat template) as text TRL tokenises back to the
    same ids; and how many did not."""
    from transformers import AutoTokenizer

    from xr_nemo.grpo.prompts import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompts = load_prompts(prompts_file, "train", tokenizer)
    rows, mismatched = [], 0
    for item, ids in zip(prompts.items, prompts.token_ids, strict=True):
        text = tokenizer.decode(ids)
        mismatched += tokenizer(text, add_special_tokens=False)["input_ids"] != ids
        rows.append({"prompt": text, "answer": item.answer})
    return rows, mismatched


def math_verify_reward(completions: list[str], answer: list[str], **_) -> list[float]:
    """Our reward (`score_task`: math-verify equivalence of the final answer), in TRL's reward signature."""
    from xr_nemo.rewards.pool import RewardSpec, RewardTask, score_task

    return [
        score_task(RewardTask(c, a), RewardSpec()).reward for c, a in zip(completions, answer, strict=True)
    ]


def grpo(work: Path, shape: Shape, built: dict, recompute: bool) -> dict[str, Any]:
    """TRL's `GRPOTrainer`, generating with Transformers `generate` (its path without vLLM), configured
    as our run: one generation batch of prompts × n per optimizer step, micro-batches of the same size,
    k3 KL against the initial policy with our coefficient, our clip ratios, token-level loss (`dapo`)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ours = algorithm_defaults()
    rows, mismatched = _prompt_texts(built["hf_dir"], built["prompts"])
    phases = MemoryPhases()
    clock = step_clock(phases)
    args = GRPOConfig(
        **_shared_args(work / "trl_grpo", shape.grpo_lr, recompute),
        per_device_train_batch_size=shape.micro_batch,
        gradient_accumulation_steps=shape.prompts * shape.n // shape.micro_batch,
        num_generations=shape.n,
        max_completion_length=shape.new_tokens,
        temperature=1.0,
        beta=ours.kl_coef,
        epsilon=ours.clip_low,
        epsilon_high=ours.clip_high,
        use_bias_correction_kl=False,  # the plain k3 estimate, as ours and veRL's low_var_kl
        loss_type="dapo",
        scale_rewards="group",
        max_steps=shape.grpo_steps,
    )
    trainer = GRPOTrainer(
        model=built["lm_dir"],
        reward_funcs=math_verify_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        callbacks=[clock],
    )
    per_step: list[dict[str, float]] = []
    totals: dict[str, float] = defaultdict(float)
    timed(trainer, "_generate", totals, "generation")
    timed(trainer, "_calculate_rewards", totals, "scoring")
    clock.on_step_end_hooks = [lambda: (per_step.append(dict(totals)), totals.clear())]
    trainer.train()
    logs = [log for log in trainer.state.log_history if "reward" in log]
    steps = []
    for seconds, split, log in zip(clock.seconds, per_step, logs, strict=True):
        generation, scoring = split.get("generation", 0.0), split.get("scoring", 0.0)
        steps.append(
            {
                "seconds": seconds,
                "generation": generation,
                "scoring": scoring,
                "training": seconds - generation - scoring,
                "completion_tokens": log.get("completions/mean_length", 0.0) * shape.prompts * shape.n,
                "reward": log["reward"],
            }
        )
    return {"steps": steps, **phases.result(), "prompt_ids_mismatched": mismatched}
