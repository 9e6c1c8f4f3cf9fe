"""A tiny random Qwen2.5-VL on the bundled sample data: the whole SFT stage in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import xr_nemo.data
from xr_nemo.config.schema import SFTConfig

SAMPLE_DATA = Path(xr_nemo.data.__file__).parent / "samples" / "openthoughts_tiny.jsonl"


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
    config.trainer.global_batch_size = 2
    config.checkpoint.every_steps = 10
    config.checkpoint.keep_last = 2
    return config
