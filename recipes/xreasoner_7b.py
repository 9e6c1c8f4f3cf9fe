"""X-Reasoner-7B (Liu et al., 2025), stage 1: Qwen2.5-VL-7B-Instruct fine-tuned on OpenThoughts-114k.

Paper values: 4 epochs; AdamW lr 1e-5, weight decay 0, betas (0.9, 0.999); lr × 0.8 after every epoch;
4 sequences of at most 4,096 tokens per device; vision tower frozen (the data are text only).

Our defaults elsewhere: samples are packed into 16,384-token sequences (one per micro-batch, about four
4,096-token samples: the paper's per-device load without padding); the global batch is 32 packed
sequences; one 8×H100 node runs TP=4 × DP=2 (`model.tensor_parallel=4`); add nodes to grow DP. For a
longer context set `data.max_length=16384 trainer.seq_length=16384`.
"""

from __future__ import annotations

from xr_nemo.config.schema import SFTConfig


def sft() -> SFTConfig:
    config = SFTConfig()
    config.run.dir = "runs/xreasoner_7b_sft"
    config.model.hf_dir = "Qwen2.5-VL-7B-Instruct"  # a local download of the hub checkpoint
    config.model.tensor_parallel = 4
    config.model.sequence_parallel = True
    config.data.train = "open-thoughts/OpenThoughts-114k"
    config.data.schema = "openthoughts"
    config.data.max_length = 4096
    config.data.overlong = "truncate"
    config.data.packing = True
    config.data.num_workers = 16
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.0
    config.optim.beta1, config.optim.beta2 = 0.9, 0.999
    config.optim.clip_grad = 1.0
    config.scheduler.name = "epoch_decay"
    config.scheduler.epoch_decay = 0.8
    config.trainer.epochs = 4
    config.trainer.seq_length = 16384
    config.trainer.micro_batch_size = 1
    config.trainer.global_batch_size = 32
    config.checkpoint.every_steps = 200
    config.checkpoint.keep_last = 3
    config.export.hf = True
    config.export.dtype = "bfloat16"
    return config
