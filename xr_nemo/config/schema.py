"""The typed configuration of a training run. Recipes return an `SFTConfig` or a `GRPOConfig`;
`key=value` overrides land on it (see `overrides.py`); the resolved config is saved as `config.yaml` in
the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field

from xr_nemo.config.parallel import ParallelConfig


@dataclass
class ModelConfig(ParallelConfig):
    """The model and how it is split. `hf_dir` holds config.json, tokenizer and chat template (and the
    weights, when `checkpoint` is not given: they are imported into the run directory once)."""

    hf_dir: str | None = "???"  # None: the `hf/` side files of `checkpoint`
    checkpoint: str | None = None  # a checkpoint, or a run directory (its latest checkpoint)
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
class FaultToleranceConfig:
    """Heartbeats to nvidia-resiliency-ext's rank monitor (active under `ft_launcher`, which restarts
    every rank from the latest checkpoint when one fails or stops beating), and a fault drill."""

    # after this many steps, replace the launcher's heartbeat timeout by one learned from the observed
    # step times (× the launcher's safety factor); kept in checkpoints across restarts. None: never.
    learn_timeout_after: int | None = 10
    # drill: make one rank fail at one step of the first launch, to prove recovery on a cluster
    inject_fault: str | None = None  # exception | hang | slow (forward passes take 3× as long)
    inject_at_step: int = 1
    inject_on_rank: int = 0


@dataclass
class StragglerConfig:
    """Every rank times its own computation; every `report_every` steps, ranks slower than `threshold` ×
    the fastest are reported (log and `straggler_*` metrics). None: off."""

    report_every: int | None = 50
    threshold: float = 1.5


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
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class PromptDataConfig:
    train: str = "???"  # hub name, or local .jsonl/.json/.parquet (Orz-Math pairs or {prompt, answer})
    split: str = "train"
    schema: str = "auto"  # auto | orz | prompt_answer | a text benchmark's reader (medqa, medmcqa, …)
    system_prompt: str | None = None  # default: the reasoning prompt (think, then <answer>)
    max_prompt_length: int = 1024  # tokens; longer prompts are dropped and counted
    on_error: str = "raise"  # raise | skip
    max_samples: int | None = None


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # vllm (colocated, refit in memory) | reference (our model; tests, TP on CPU)
    n: int = 8  # completions per prompt (the group)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    thinking_budget: int | None = None  # forced exiting: append </think> after this many tokens
    gpu_memory_utilization: float = 0.5  # vLLM's share of device memory (of CPU memory on CPU)
    kv_cache_gib: float | None = None  # vLLM's KV cache size; None: what gpu_memory_utilization leaves


@dataclass
class GRPOAlgorithmConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28  # > clip_low: "clip-higher"
    kl_coef: float = 0.01  # k3 estimator against the initial policy; 0 skips the reference model
    loss_aggregation: str = "token"  # token | sequence
    normalize_std: bool = True  # divide advantages by the group's reward std
    updates_per_rollout: int = 1  # optimizer steps (mini-batches) per rollout batch
    importance_cap: float | None = 2.0  # truncated importance sampling vs the engine's logprobs; None: off
    dynamic_sampling: bool = False  # drop groups with equal rewards and sample more prompts
    max_sampling_rounds: int = 3
    overlong: str = "keep"  # keep | mask (responses cut by max_new_tokens carry no loss)
    overlong_penalty: float = 0.0  # subtracted from the reward of a cut response


@dataclass
class RewardConfig:
    correctness: str = "auto"  # auto (choice when the item has options, else math) | math | choice
    format_weight: float = 0.0
    workers: int = 2
    timeout_s: float = 10.0  # per answer; a worker that overruns is killed and the answer scores 0


@dataclass
class GRPOTrainerConfig:
    seed: int = 1234
    epochs: int = 1  # passes over the prompts
    max_steps: int | None = None
    prompts_per_step: int = 128  # rollout batch, over all data-parallel ranks
    micro_batch_size: int = 4  # sequences per forward pass
    resume: str = "auto"
    progress: bool = True


@dataclass
class GRPOConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/grpo"))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hf_dir=None))
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOAlgorithmConfig = field(default_factory=GRPOAlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: GRPOTrainerConfig = field(default_factory=GRPOTrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class EvalConfig:
    """`xr-nemo eval --model DIR --benchmarks a,b [key=value …]`."""

    model: str = "???"  # an HF directory, or a run directory (its `hf/` export)
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k", "medqa"])
    data: dict[str, str] = field(default_factory=dict)  # benchmark → local file instead of the hub
    out_dir: str | None = None  # default: <model>/eval
    limit: int | None = None  # first N items per benchmark
    samples: int = 1  # completions per item; > 1 adds avg@k, majority@k and pass@k
    temperature: float = 0.0  # greedy for the headline numbers (the paper samples at 0.3 for @k)
    max_new_tokens: int = 4096
    thinking_budget: int | None = 3840  # forced exiting (the paper caps at 4,096 with it); None: off
    batch_size: int = 64  # items per generation call (and per append to the predictions file)
    engine: str = "auto"  # auto (vLLM; on CPU the Hugging Face model for image benchmarks) | vllm | hf
    data_parallel: int = 1  # engine replicas, each in its own process on its own GPUs
    tensor_parallel: int = 1  # GPUs per vLLM replica
    gpu_memory_utilization: float = 0.8
    kv_cache_gib: float | None = None  # vLLM's KV cache size; None: what gpu_memory_utilization leaves
    dtype: str = "auto"
    seed: int = 0
    reward_timeout_s: float = 10.0  # per math answer


@dataclass
class DistillConfig:
    """`xr-nemo distill --teacher DIR --data FILE --schema medqa --out DIR [key=value …]`: rejection-
    sampled chains of thought from a teacher, as an SFT dataset."""

    teacher: str = "???"  # an HF directory (e.g. QwQ-32B) or a run directory
    data: str = "???"  # a local file/folder or a hub id, read by the `schema` benchmark's reader
    schema: str = "medqa"  # a benchmark's reader: medqa, medqa_5op, medmcqa, gsm8k, …
    out: str = "???"  # traces.jsonl, stats.json and the candidates (resumable) go here
    samples: int = 4  # candidate traces per question
    keep: int = 1  # correct traces kept per question
    temperature: float = 0.7
    max_new_tokens: int = 4096
    thinking_budget: int | None = None
    limit: int | None = None  # first N questions
    batch_size: int = 64
    engine: str = "auto"
    data_parallel: int = 1
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.8
    kv_cache_gib: float | None = None  # vLLM's KV cache size; None: what gpu_memory_utilization leaves
    dtype: str = "auto"
    seed: int = 0
    reward_timeout_s: float = 10.0
