"""A tiny random Qwen2.5-VL on the bundled sample data: each stage in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import xr_nemo.data
from xr_nemo.config.schema import GRPOConfig, SFTConfig

SAMPLES = Path(xr_nemo.data.__file__).parent / "samples"
SAMPLE_DATA = SAMPLES / "openthoughts_tiny.jsonl"
SAMPLE_PROMPTS = SAMPLES / "arithmetic_prompts_tiny.jsonl"


def sft() -> SFTConfig:
    config = SFTConfig()
    config.run.dir = "runs/tiny_sft"
    config.model.hf_dir = "${run.dir}/tiny_model"
    config.model.synthetic = "tiny"
    config.data.train = str(SAMPLE_DATA)
    config.data.max_length = 1024
    config.data.num_workers = 1
    config.optim.lr = 1e-3
    config.scheduler.name = "epoch_decay"
    config.trainer.epochs = 4
    config.trainer.seq_length = 1024
    config.trainer.micro_batch_size = 1
    # two packed sequences per step (the 7B recipes count samples instead: trainer.global_batch_samples)
    config.trainer.global_batch_size = 2
    config.checkpoint.every_steps = 10
    config.checkpoint.keep_last = 2
    return config


def grpo() -> GRPOConfig:
    """Continues the tiny SFT run (`xr-nemo sft` first, or point `init.checkpoint` elsewhere)."""
    config = GRPOConfig()
    config.run.dir = "runs/tiny_grpo"
    config.model.checkpoint = "runs/tiny_sft"
    config.data.train = str(SAMPLE_PROMPTS)
    config.data.max_prompt_length = 256
    config.rollout.engine = "vllm"
    config.rollout.n = 4
    config.rollout.max_new_tokens = 64
    config.rollout.kv_cache_gib = 0.25  # a fixed size: shares of CPU memory vary between machines
    config.reward.workers = 1
    config.optim.lr = 1e-4
    config.trainer.prompts_per_step = 8
    config.trainer.micro_batch_size = 8
    config.checkpoint.every_steps = 4
    return config
