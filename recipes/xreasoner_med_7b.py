"""X-Reasoner-Med-7B (Liu et al., 2025): X-Reasoner continued on medical text only, with the same two
stages — SFT on MedQA questions with chains of thought distilled from a stronger reasoning model and
kept by rejection sampling (`xr-nemo distill`), then GRPO with the multiple-choice reward on the same
MedQA questions. Evaluate with `xr-nemo eval --suite medical`.

Paper values: the teacher is QwQ-32B; only correct traces are kept; both stages start from X-Reasoner;
SFT trains 4 epochs, as on every dataset (Appendix B.1). The paper publishes no other hyperparameters
for the medical stages; ours are X-Reasoner's stage values (`recipes/xreasoner_7b.py`) except where a
docstring says otherwise.

The data, as `xr-nemo distill` and the MedQA release give them:

    xr-nemo distill --recipe xreasoner_med_7b --teacher QwQ-32B --data medqa/train.jsonl
"""

from __future__ import annotations

from xr_nemo.config.schema import DistillConfig, EvalConfig, GRPOConfig, SFTConfig
from xr_nemo.recipes import xreasoner_7b


def sft() -> SFTConfig:
    """Stage 1 on distilled MedQA traces, from the X-Reasoner GRPO run: X-Reasoner's SFT values, so 4
    epochs (Appendix B.1 trains each dataset for 4) of 128 samples per step."""
    config = xreasoner_7b.sft()
    config.run.dir = "runs/xreasoner_med_7b_sft"
    config.model.hf_dir = None  # the side files of the X-Reasoner checkpoint
    config.model.checkpoint = "runs/xreasoner_7b_grpo"
    config.data.train = "runs/medqa_traces/traces.jsonl"
    config.data.schema = "messages"
    config.data.num_workers = 8
    config.trainer.epochs = 4
    return config


def grpo() -> GRPOConfig:
    """Stage 2 on the MedQA training questions (read by the `medqa` benchmark's reader, so prompts look
    exactly like evaluation prompts), with the multiple-choice 0/1 reward, from the medical SFT run."""
    config = xreasoner_7b.grpo()
    config.run.dir = "runs/xreasoner_med_7b_grpo"
    config.model.checkpoint = "runs/xreasoner_med_7b_sft"
    config.data.train = "medqa/train.jsonl"
    config.data.schema = "medqa"
    config.reward.correctness = "choice"
    config.trainer.epochs = 3
    return config


def distill() -> DistillConfig:
    """The SFT data: MedQA training questions answered by the teacher, correct traces kept. Ours: 8
    samples per question at temperature 0.7, one kept (the paper gives neither)."""
    config = DistillConfig(teacher="QwQ-32B", data="medqa/train.jsonl", schema="medqa")
    config.out = "runs/medqa_traces"
    config.samples = 8
    config.keep = 1
    config.generation.temperature = 0.7
    config.generation.max_new_tokens = 4096
    return config


def eval() -> EvalConfig:
    """The medical suite, greedy with forced exiting, as the paper reports it (Fig. 1 and 4; NEJM from
    a local download, `+data.nejm=`; `--suite medical` for every medical benchmark)."""
    config = xreasoner_7b.eval()
    config.model = "runs/xreasoner_med_7b_grpo"
    config.benchmarks = ["medqa", "mmlu_pro_health", "mmmu_health", "mmmu_pro_health", "medxpertqa_mm"]
    config.benchmarks.append("nejm")  # local files only
    return config
