"""The typed configuration of a training run. Recipes return an `SFTConfig`; `key=value` overrides land
on it (see `overrides.py`); the resolved config is saved as `config.yaml` in the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field

from xr_nemo.config.parallel import ParallelConfig


@dataclass
class ModelConfig(ParallelConfig):
    """The model and how it is split. `hf_dir` holds config.json, tokenizer and chat template (and the
    weights, when `checkpoint` is not given: they are imported into the run directory once)."""

    hf_dir: str = "???"
    checkpoint: str | None = None
    synthetic: str | None = None  # "tiny": build a tiny random Qwen2.5-VL at hf_dir if it is absent
    train_vision: bool = False
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | bfloat16 | float32


@dataclass
class DataConfig:
    train: str = "???"  # hub name, or a local .jsonl/.json/.parquet file or directory of them
    split: str = "train"
    validation: str | None = None
    validation_split: str = "train"
    schema: str = "auto"  # auto | openthoughts | messages | prompt_response
    max_length: int = 4096  # tokens per sample, prompt and response together
    overlong: str = "truncate"  # truncate | drop
    on_error: str = "raise"  # raise | skip (bad records are counted and reported)
    packing: bool = True
    answer_tags: bool = False  # wrap the final answer in <answer> … </answer>
    system_prompt: str | None = None  # replaces the data's system prompt when set
    max_samples: int | None = None
    num_workers: int = 2  # tokenisation processes
    cache_dir: str | None = None  # default: <run.dir>/cache


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class SchedulerConfig:
    name: str = "constant"  # constant | cosine | epoch_decay
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # of the total steps; used when warmup_steps is 0
    min_lr: float = 0.0  # cosine floor
    epoch_decay: float = 0.8  # epoch_decay: lr × this after every epoch


@dataclass
class TrainerConfig:
    seed: int = 1234
    epochs: int = 1
    max_steps: int | None = None  # stop early; the schedule still spans `epochs`
    seq_length: int = 4096  # length of a packed sequence (packing), or the padding cap (no packing)
    micro_batch_size: int = 1  # sequences per forward pass per data-parallel rank
    global_batch_size: int = 8  # sequences per optimizer step, over all data-parallel ranks
    val_every: int | None = None
    val_batches: int = 4
    resume: str = "auto"  # auto (latest checkpoint of run.dir, if any) | never | a checkpoint path
    progress: bool = True


@dataclass
class CheckpointConfig:
    every_steps: int | None = 500
    keep_last: int | None = 2  # None keeps all
    at_end: bool = True


@dataclass
class ExportConfig:
    hf: bool = False  # export the final checkpoint to <run.dir>/hf
    dtype: str | None = None  # bfloat16 | float16 | float32; default as trained


@dataclass
class RunConfig:
    dir: str = "runs/sft"


@dataclass
class SFTConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
