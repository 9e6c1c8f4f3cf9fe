"""X-Reasoner's recipe on Qwen3-VL-8B-Instruct (ours: the paper trains Qwen2.5-VL-7B-Instruct only).

Every hyperparameter is the paper's, as `recipes/xreasoner_7b.py` encodes it: stage 1 (`sft`) on
OpenThoughts-114k for 4 epochs of 128 samples per step at lr 1e-5 with ×0.8 after each epoch, samples
truncated at 4,096 tokens; stage 2 (`grpo`) on Orz-Math-57k, 3 epochs of 128 prompts × 8 rollouts of up
to 4,096 tokens, lr 3e-6, KL 0.01, clip-higher. Only the model and the run directories change.

Layout: the 8B's 32 query and 8 key-value heads split over TP=4 as the 7B's do, and at this size the
same one-node layout fits (`docs/scaling.md`, "Qwen3-VL-8B": `xr-nemo plan --family qwen3_vl`).
Pipeline parallelism must leave DeepStack's first three decoder layers on the first stage, beside the
vision tower that feeds them (any PP up to 12 does).
"""

from __future__ import annotations

from xr_nemo.config.schema import EvalConfig, GRPOConfig, SFTConfig
from xr_nemo.recipes import xreasoner_7b


def sft() -> SFTConfig:
    config = xreasoner_7b.sft()
    config.run.dir = "runs/xreasoner_qwen3vl_8b_sft"
    config.model.hf_dir = "Qwen3-VL-8B-Instruct"  # a local download of the hub checkpoint
    return config


def grpo() -> GRPOConfig:
    config = xreasoner_7b.grpo()
    config.run.dir = "runs/xreasoner_qwen3vl_8b_grpo"
    config.model.checkpoint = "runs/xreasoner_qwen3vl_8b_sft"
    return config


def eval() -> EvalConfig:
    config = xreasoner_7b.eval()
    config.model = "runs/xreasoner_qwen3vl_8b_grpo"
    return config
