"""The X-Reasoner-Med continuation at toy size on a CPU: SFT on the bundled distilled-style MedQA traces,
then GRPO on the bundled MedQA questions, from a tiny run given as `model.checkpoint`
(e.g. `runs/tiny_grpo`)."""

from __future__ import annotations

from xr_nemo.config.schema import DistillConfig, GRPOConfig, SFTConfig
from xr_nemo.recipes import tiny_cpu

MEDQA = tiny_cpu.SAMPLES / "medqa_tiny.jsonl"
MEDQA_TRACES = tiny_cpu.SAMPLES / "medqa_traces_tiny.jsonl"


def sft() -> SFTConfig:
    config = tiny_cpu.sft()
    config.run.dir = "runs/tiny_med_sft"
    config.model.hf_dir = None
    config.model.synthetic = None
    config.model.checkpoint = "runs/tiny_grpo"
    config.data.train = str(MEDQA_TRACES)
    config.data.schema = "messages"
    config.data.max_length = 512
    config.trainer.seq_length = 512
    config.trainer.epochs = 1
    config.export.hf = True
    return config


def grpo() -> GRPOConfig:
    config = tiny_cpu.grpo()
    config.run.dir = "runs/tiny_med_grpo"
    config.model.checkpoint = "runs/tiny_med_sft"
    config.data.train = str(MEDQA)
    config.data.schema = "medqa"
    config.data.max_prompt_length = 512
    config.reward.correctness = "choice"
    config.export.hf = True
    return config


def distill() -> DistillConfig:
    """Traces for the toy medical SFT from a tiny teacher (give `--teacher`), on the bundled questions."""
    config = DistillConfig(data=str(MEDQA), schema="medqa", out="runs/tiny_medqa_traces")
    config.samples = 4
    config.generation.max_new_tokens = 64
    config.generation.kv_cache_gib = 0.25
    return config
