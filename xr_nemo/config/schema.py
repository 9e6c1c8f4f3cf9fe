"""The typed configuration of every command. Recipes return these dataclasses; `key=value` overrides
land on them (`overrides.py`), choice fields are Enums (a wrong value is refused with the allowed ones),
bounds live beside the fields (`bounds.py`), rules between keys in each section's `check` method, and both
run when a config is made (`bounds.validate`), before any process starts; the resolved config is saved as
`config.yaml` in the run directory. The comment beside each field is its documentation (`reference.py`
makes docs/config.md's "Every key" from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from xr_nemo.config.bounds import at_least, between, positive
from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.errors import ConfigError

# ── choices ──────────────────────────────────────────────────────────────────────────────────────────
# Member names are what users write (`data.overlong=drop`); as StrEnums they compare equal to them.


class Dtype(StrEnum):
    auto = "auto"  # bfloat16 on GPU, float32 on CPU
    bfloat16 = "bfloat16"
    float32 = "float32"


class ExportDtype(StrEnum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class TransformerImpl(StrEnum):
    auto = "auto"  # Transformer Engine when it imports and CUDA is present, local otherwise
    local = "local"  # megatron-core's torch layers: any device, unfused attention with s × s scores
    transformer_engine = "transformer_engine"  # fused layers, flash/ring attention, FP8 (CUDA only)


class FP8Format(StrEnum):
    hybrid = "hybrid"  # e4m3 weights and activations, e5m2 gradients
    e4m3 = "e4m3"


class FP8Recipe(StrEnum):
    """How FP8 scales are chosen (megatron-core 0.16.1's choices, less `custom`)."""

    delayed = "delayed"  # from an amax history of earlier steps (Ada/Hopper and newer)
    tensorwise = "tensorwise"  # per tensor, from the current values (Ada/Hopper and newer)
    blockwise = "blockwise"  # per block of values (Hopper and newer, CUDA ≥ 12.9)
    mxfp8 = "mxfp8"  # microscaling, per 32 values (data-centre Blackwell: compute capability 10.x–11.x)


# What the token count of each FP8 GEMM must divide by (Transformer Engine's alignment for quantization):
# 16 for FP8 GEMMs; MXFP8 scales blocks of 32 values along the token dimension too.
FP8_TOKEN_MULTIPLE: dict[FP8Recipe, int] = {
    FP8Recipe.delayed: 16,
    FP8Recipe.tensorwise: 16,
    FP8Recipe.blockwise: 16,
    FP8Recipe.mxfp8: 32,
}


class Recompute(StrEnum):
    none = "none"
    selective = "selective"  # recompute core attention (its s × s scores) in the backward pass
    full = "full"  # keep only each layer's input; recompute the whole layer


class CPCommType(StrEnum):
    """Transformer Engine's context-parallel attention (the local path always all-gathers keys)."""

    p2p = "p2p"  # ring attention: key/value blocks passed around the ring, overlapped with compute
    all_gather = "all_gather"
    a2a = "a2a"  # heads all-to-all (Ulysses); heads must divide by context_parallel


class Synthetic(StrEnum):
    tiny = "tiny"  # build a tiny random Qwen2.5-VL at model.hf_dir if it is absent


class SFTSchema(StrEnum):
    auto = "auto"
    openthoughts = "openthoughts"
    messages = "messages"
    prompt_response = "prompt_response"


class PromptTemplate(StrEnum):
    """What wraps a question in the user turn (SFT data, GRPO prompts, evaluation)."""

    paper = "paper"  # the paper's templates (Appendix C): training for SFT and RL, evaluation for eval
    none = "none"  # the question as it is (SFT: turns as the data has them, reasoning in <think> only)


class Overlong(StrEnum):
    truncate = "truncate"
    drop = "drop"


# `raise` is a keyword, hence the functional form. skip: bad records are counted and reported.
OnError = StrEnum("OnError", {"raise": "raise", "skip": "skip"})


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"
    epoch_decay = "epoch_decay"


class Fault(StrEnum):
    exception = "exception"
    hang = "hang"
    slow = "slow"  # forward passes take 3× as long


class EngineKind(StrEnum):
    auto = "auto"  # eval: vLLM, or the Hugging Face model for images where vLLM cannot take them
    vllm = "vllm"  # colocated in GRPO, refit in memory
    hf = "hf"  # the Hugging Face model (eval and distillation)
    reference = "reference"  # GRPO only: generates with the training model itself (tests, TP on CPU)


ROLLOUT_ENGINES = (EngineKind.vllm, EngineKind.reference)  # those that generate from the live policy


class LossAggregation(StrEnum):
    token = "token"
    sequence = "sequence"


class OverlongResponses(StrEnum):
    keep = "keep"
    mask = "mask"  # responses cut by max_new_tokens carry no loss


class Correctness(StrEnum):
    auto = "auto"  # choice when the item has options, else math
    math = "math"
    choice = "choice"


# ── shared sections ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class ModelConfig:
    """The model. `hf_dir` holds config.json, tokenizer and chat template (and the weights, when
    `checkpoint` is not given: they are imported into the run directory once)."""

    hf_dir: str | None = "???"  # None: the `hf/` side files of `checkpoint`
    checkpoint: str | None = None  # a checkpoint, or a run directory (its latest checkpoint)
    synthetic: Synthetic | None = None  # tests and demos: make the model instead of downloading one
    train_vision: bool = False  # also train the vision tower (the paper trains the language model only)
    # parameters kept as they are, as glob patterns over megatron-core names (`xr-nemo` checkpoints'
    # keys), e.g. ["language_model.embedding.*"]
    frozen: list[str] = field(default_factory=list)
    dtype: Dtype = Dtype.auto  # of the weights and activations; the optimizer keeps fp32 master weights
    transformer_impl: TransformerImpl = TransformerImpl.auto  # the layers; checkpoints are the same for all
    fp8: FP8Format | None = None  # FP8 matmuls (Transformer Engine on an FP8-capable GPU); None: off
    fp8_recipe: FP8Recipe = FP8Recipe.delayed  # how FP8 scales are chosen; newer recipes need newer GPUs
    recompute: Recompute = Recompute.none  # activation recompute: memory for compute
    cp_comm_type: CPCommType = CPCommType.p2p  # when parallel.context_parallel > 1


@dataclass
class GenerationConfig:
    """How an engine generates: GRPO's rollouts, evaluation and distillation share it."""

    engine: EngineKind = EngineKind.auto  # what generates: vLLM, the HF model, or the training model
    temperature: float = at_least(0.0, 1.0)  # 0: greedy
    top_p: float = between(0.0, 1.0, 1.0, low_open=True)  # nucleus sampling; 1: off
    max_new_tokens: int = positive(4096)  # per completion; longer ones are cut (and counted)
    thinking_budget: int | None = positive(None)  # forced exiting: close thinking after this many tokens
    gpu_memory_utilization: float = between(0.0, 1.0, 0.5, low_open=True)  # of CPU memory on CPU
    kv_cache_gib: float | None = at_least(0.0, None, open=True)  # None: what gpu_memory_utilization leaves
    tensor_parallel: int = positive(1)  # GPUs per vLLM engine in eval and distillation (GRPO: 1 per rank)
    # each item's seed derives from it, so a rerun samples the same (GRPO refuses it: trainer.seed seeds)
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW (megatron-core's optimizer, fp32 master weights and moments)."""

    lr: float = at_least(0.0, 1e-5)  # peak learning rate, reached after the warm-up
    weight_decay: float = at_least(0.0, 0.0)  # decoupled from the gradient (AdamW)
    beta1: float = between(0.0, 1.0, 0.9, high_open=True)  # decay of the first moment (momentum)
    beta2: float = between(0.0, 1.0, 0.999, high_open=True)  # decay of the second moment
    eps: float = at_least(0.0, 1e-8, open=True)  # added to the second moment's root, against division by 0
    clip_grad: float | None = at_least(0.0, 1.0, open=True)  # None: no clipping


@dataclass
class SchedulerConfig:
    """The learning rate over the steps of all epochs."""

    name: Schedule = Schedule.constant  # the shape after the warm-up
    warmup_steps: int = at_least(0, 0)  # linear warm-up from 0 to optim.lr
    warmup_fraction: float = between(0.0, 1.0, 0.0)  # of the total steps; used when warmup_steps is 0
    min_lr: float = at_least(0.0, 0.0)  # cosine floor
    epoch_decay: float = at_least(0.0, 0.8)  # epoch_decay: lr × this after every epoch


class Direction(StrEnum):
    up = "up"  # the metric should rise (a reward)
    down = "down"  # the metric should fall (a loss)


@dataclass
class PlateauConfig:
    """Stop early once `metric` stops improving: its mean over the last `window` steps improves on the
    mean over the `window` steps before by less than `min_change`. The paper stops its runs "on the
    convergence of the reward value on the training set"; this is that rule, made explicit (ours)."""

    metric: str | None = None  # a metric of metrics.jsonl, e.g. reward_mean; None: off
    direction: Direction = Direction.up  # which way is better: up for a reward, down for a loss
    window: int = positive(20)  # steps per mean; longer windows ride out noisy metrics
    min_change: float = at_least(0.0, 0.0)  # the least improvement between windows that keeps training


@dataclass
class TrainerConfig:
    """What the training loop needs from every stage."""

    seed: int = 1234  # data order, initialisation and GRPO's rollout seeds: a rerun repeats the run
    epochs: int = positive(1)  # passes over the data (the schedule spans them)
    max_steps: int | None = positive(None)  # stop early; the schedule still spans `epochs`
    micro_batch_size: int = positive(1)  # sequences per forward pass per data-parallel rank
    # auto (the newest intact checkpoint of run.dir, if any) | never (refuses a run.dir with checkpoints)
    # | restart (step 0 even so, replacing them) | a checkpoint path. docs/sft.md, "Checkpoints and resume"
    resume: str = "auto"
    progress: bool = True  # a progress bar on rank 0 (metrics.jsonl is written either way)
    stop_on_plateau: PlateauConfig = field(default_factory=PlateauConfig)


@dataclass
class CheckpointConfig:
    every_steps: int | None = positive(500)  # None: only at the end
    keep_last: int | None = positive(2)  # None keeps all
    at_end: bool = True  # also save after the last step, whatever every_steps says


@dataclass
class ExportConfig:
    hf: bool = False  # export the final checkpoint to <run.dir>/hf
    dtype: ExportDtype | None = None  # default: as trained


@dataclass
class FaultToleranceConfig:
    """Heartbeats to nvidia-resiliency-ext's rank monitor (active under `ft_launcher`, which restarts
    every rank from the latest checkpoint when one fails or stops beating), and a fault drill."""

    # after this many steps, replace the launcher's heartbeat timeout by one learned from the observed
    # step times (× the launcher's safety factor); kept in checkpoints across restarts. None: never.
    learn_timeout_after: int | None = positive(10)
    # drill: make one rank fail at one step of the first launch, to prove recovery on a cluster
    inject_fault: Fault | None = None
    inject_at_step: int = positive(1)  # the step at which the drill's fault happens
    inject_on_rank: int = at_least(0, 0)  # the rank that fails; it must exist in the job


@dataclass
class StragglerConfig:
    """Every rank times its own computation; every `report_every` steps, ranks slower than `threshold` ×
    the fastest are reported (log and `straggler_*` metrics). None: off."""

    report_every: int | None = positive(50)  # steps between reports; None: off
    threshold: float = at_least(1.0, 1.5, open=True)  # × the fastest rank's time that makes a straggler


@dataclass
class RunConfig:
    dir: str = "runs/sft"  # checkpoints, config.yaml, metrics and logs; one launch at a time (run.lock)


@dataclass
class TrainingConfig:
    """The sections every training stage has; `SFTConfig` and `GRPOConfig` add their own."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    stragglers: StragglerConfig = field(default_factory=StragglerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def sequence_multiple(self) -> int:
        """What the sequences of every micro-batch are padded to: the parallel layout's multiple, and
        with `model.fp8` one that gives each rank's slice of a sequence (1/CP of it, and 1/TP of that
        under sequence parallelism) a token count FP8 GEMMs take, whatever the micro-batch size."""
        parallel = self.parallel
        if self.model.fp8 is None:
            return parallel.sequence_multiple
        ranks = parallel.context_parallel * (parallel.tensor_parallel if parallel.sequence_parallel else 1)
        fp8 = FP8_TOKEN_MULTIPLE[FP8Recipe(self.model.fp8_recipe)]
        return math.lcm(parallel.sequence_multiple, ranks * fp8)


# ── stage 1: SFT ─────────────────────────────────────────────────────────────────────────────────────


@dataclass
class DataConfig:
    train: str = "???"  # hub name, or a local .jsonl/.json/.parquet file or directory of them
    split: str = "train"  # of a hub dataset (local files have none)
    validation: str | None = None  # held-out data for val_loss, read as `train` is; None: no validation
    validation_split: str = "train"  # of a hub `validation` dataset
    schema: SFTSchema = SFTSchema.auto  # the records' layout; auto tells it from the first record
    max_length: int = positive(4096)  # tokens per sample, prompt and response together
    overlong: Overlong = Overlong.truncate  # a sample over max_length: cut its response, or leave it out
    on_error: OnError = OnError["raise"]  # a bad record: stop naming it, or skip it and count it
    packing: bool = True  # several samples per sequence of trainer.seq_length: less padding computed
    template: PromptTemplate = PromptTemplate.paper  # what wraps each question in the user turn
    system_prompt: str | None = None  # replaces the data's system turn when set (the paper has none)
    max_samples: int | None = positive(None)  # the first N records only (smoke tests); None: all
    num_workers: int = positive(2)  # tokenisation processes
    cache_dir: str | None = None  # default: <run.dir>/cache


@dataclass
class SFTTrainerConfig(TrainerConfig):
    seq_length: int = positive(4096)  # length of a packed sequence (packing), or the padding cap
    # Exactly one of the two sizes a step (docs/sft.md, "Batches"): sequences (packed bins) per optimizer
    # step over all data-parallel ranks, or samples per step, packed into as many sequences as they need
    global_batch_size: int | None = positive(8)
    global_batch_samples: int | None = positive(
        None
    )  # samples per step (7B recipes: 128, the paper's 4 × 32 GPUs)
    val_every: int | None = positive(None)  # steps between validation losses (needs data.validation)
    val_batches: int = positive(4)  # global batches of validation data per validation

    def check(self, prefix: str) -> None:
        """Exactly one of the two ways to size a step (`xr_nemo.data.batches`)."""
        by_samples = self.global_batch_samples is not None
        if by_samples == (self.global_batch_size is not None):
            raise ConfigError(
                f"{prefix}global_batch_size and {prefix}global_batch_samples are both "
                f"{'set' if by_samples else 'null'}; "
                "exactly one sizes an optimizer step (packed sequences or samples)",
                where=f"{prefix}global_batch_samples",
                fix=f"set {prefix}global_batch_size=null to count samples per step, or "
                f"{prefix}global_batch_samples=null to count packed sequences",
            )


@dataclass
class SFTConfig(TrainingConfig):
    data: DataConfig = field(default_factory=DataConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)

    def check(self, prefix: str) -> None:
        """Pipeline parallelism sends every sequence at the fixed length `trainer.seq_length`, so it must
        be a multiple of what the layout pads to; without it, micro-batches are padded as they come."""
        trainer, key = self.trainer, f"{prefix}trainer.seq_length"
        multiple = self.sequence_multiple
        if self.parallel.pipeline_parallel > 1 and trainer.seq_length % multiple:
            raise ConfigError(
                f"{key} {trainer.seq_length} is not a multiple of {multiple}: pipeline "
                "parallelism pads every sequence to it, context and sequence parallelism split "
                "sequences into equal parts, and FP8 (model.fp8) takes whole blocks of 16 or 32 tokens "
                "per rank",
                where=key,
                fix=f"set {key} to a multiple of {multiple}",
            )
        if self.data.max_length - 1 > trainer.seq_length:
            raise ConfigError(
                f"{prefix}data.max_length {self.data.max_length} does not fit {key} {trainer.seq_length}",
                where=f"{prefix}data.max_length",
                fix=f"set {prefix}data.max_length ≤ {key} + 1",
            )


# ── stage 2: GRPO ────────────────────────────────────────────────────────────────────────────────────


@dataclass
class PromptDataConfig:
    train: str = "???"  # hub name, or local .jsonl/.json/.parquet (Orz-Math pairs or {prompt, answer})
    split: str = "train"  # of a hub dataset (local files have none)
    schema: str = "auto"  # auto | orz | prompt_answer | a text benchmark's reader (medqa, medmcqa, …)
    system_prompt: str | None = None  # before the user turn; the paper sends none
    template: PromptTemplate = PromptTemplate.paper  # what wraps each question in the user turn
    max_prompt_length: int = positive(1024)  # tokens; longer prompts are dropped and counted
    on_error: OnError = OnError["raise"]  # a bad record: stop naming it, or skip it and count it
    max_samples: int | None = positive(None)  # the first N prompts only (smoke tests); None: all


@dataclass
class RolloutConfig(GenerationConfig):
    """Generation for GRPO: `n` completions per prompt from the current policy."""

    engine: EngineKind = EngineKind.vllm  # vllm (refit in memory every step) or reference (tests, CPU)
    n: int = at_least(2, 8)  # completions per prompt (the group)
    # vLLM's sleep while training runs: 1 moves its weights to host memory, 2 drops them (refit rewrites
    # them); both drop the KV cache. No-op on CPU.
    sleep_level: int = between(1, 2, 1)

    def check(self, prefix: str) -> None:
        """One engine per training rank, refit from the policy and seeded from `trainer.seed`."""
        if self.engine not in ROLLOUT_ENGINES:
            raise ConfigError(
                f"{prefix}engine={self.engine} cannot generate rollouts",
                where=f"{prefix}engine",
                fix=f"one of {', '.join(ROLLOUT_ENGINES)}",
            )
        if self.tensor_parallel != 1:
            raise ConfigError(
                "rollout engines run one per training rank; their tensor parallelism is not configurable",
                where=f"{prefix}tensor_parallel",
                fix=f"leave {prefix}tensor_parallel=1",
            )
        if self.seed != GenerationConfig.seed:
            raise ConfigError(
                f"{prefix}seed={self.seed} is not used: each rollout's seed is a function of trainer.seed, "
                "the prompt and the sample, so a resumed run samples what the uninterrupted one did",
                where=f"{prefix}seed",
                fix=f"set trainer.seed instead (and leave {prefix}seed unset)",
            )


@dataclass
class GRPOAlgorithmConfig:
    clip_low: float = at_least(0.0, 0.2)  # the ratio may fall to 1 − clip_low before the update stops
    clip_high: float = at_least(0.0, 0.28)  # and rise to 1 + clip_high; ≥ clip_low ("clip-higher": more)
    kl_coef: float = at_least(0.0, 0.01)  # k3 estimator against the initial policy; 0 skips the reference
    entropy_coef: float = at_least(0.0, 0.0)  # bonus: loss − coef × entropy; veRL before 0.3: 0.001
    # token: every response token weighs the same (long answers count more); sequence: every response does
    loss_aggregation: LossAggregation = LossAggregation.token
    normalize_std: bool = True  # divide advantages by the group's reward std
    updates_per_rollout: int = positive(1)  # optimizer steps (mini-batches) per rollout batch
    importance_cap: float | None = at_least(1.0, 2.0)  # truncated IS vs the engine's logprobs; None: off
    dynamic_sampling: bool = False  # drop groups with equal rewards and sample more prompts
    max_sampling_rounds: int = positive(3)  # dynamic sampling's limit; a step may then have fewer groups
    overlong: OverlongResponses = OverlongResponses.keep  # what a response cut by max_new_tokens teaches
    overlong_penalty: float = at_least(0.0, 0.0)  # subtracted from the reward of a cut response

    def check(self, prefix: str) -> None:
        if self.clip_high < self.clip_low:
            raise ConfigError(
                f"{prefix}clip_high={self.clip_high} is below {prefix}clip_low={self.clip_low}",
                where=f"{prefix}clip_high",
                fix=f"set {prefix}clip_high ≥ {prefix}clip_low (equal: symmetric clipping)",
            )


@dataclass
class RewardConfig:
    """reward = correctness (0 or 1) + format_weight × format (0 or 1)."""

    correctness: Correctness = Correctness.auto  # how an answer is judged: as math, or as a choice letter
    format_weight: float = at_least(0.0, 0.0)  # for a closed <think> then an answer; the paper uses none
    workers: int = positive(2)  # processes that judge answers, so a hostile answer cannot stall training
    timeout_s: float = at_least(0.0, 10.0, open=True)  # per answer; an overrunning worker is killed: 0


@dataclass
class GRPOTrainerConfig(TrainerConfig):
    prompts_per_step: int = positive(128)  # rollout batch, over all data-parallel ranks
    micro_batch_size: int = positive(4)


@dataclass
class GRPOConfig(TrainingConfig):
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/grpo"))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hf_dir=None))
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOAlgorithmConfig = field(default_factory=GRPOAlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: GRPOTrainerConfig = field(default_factory=GRPOTrainerConfig)

    def check(self, prefix: str) -> None:
        """The reference engine generates with the training model, so it takes the model's layout."""
        if self.rollout.engine != EngineKind.reference:
            return
        if self.model.fp8 is not None:
            raise ConfigError(
                "model.fp8 takes token counts in multiples of 16, and the reference engine generates with "
                "the training model on unpadded prompts",
                where=f"{prefix}model.fp8 / {prefix}rollout.engine",
                fix=f"set {prefix}rollout.engine=vllm, or {prefix}model.fp8=null",
            )
        if self.parallel.context_parallel > 1:
            raise ConfigError(
                "context parallelism needs rollout.engine=vllm: the reference engine generates with the "
                "training model, which under context parallelism holds a slice of each sequence",
                where=f"{prefix}parallel.context_parallel / {prefix}rollout.engine",
                fix=f"set {prefix}rollout.engine=vllm, or {prefix}parallel.context_parallel=1",
            )


# ── evaluation and distillation ──────────────────────────────────────────────────────────────────────


@dataclass
class EvalConfig:
    """`xr-nemo eval --model DIR --benchmarks a,b [key=value …]`."""

    model: str = "???"  # an HF directory, or a run directory (its `hf/` export)
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k", "medqa"])  # names: docs/eval.md
    data: dict[str, str] = field(default_factory=dict)  # benchmark → local file instead of the hub
    out_dir: str | None = None  # default: <model>/eval
    limit: int | None = positive(None)  # first N items per benchmark
    samples: int = positive(1)  # completions per item; > 1 adds avg@k, majority@k and pass@k
    template: PromptTemplate = PromptTemplate.paper  # the paper's evaluation templates, or the question only
    # greedy for the headline numbers (the paper samples at 0.3 for @k); forced exiting as the paper
    generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(
            temperature=0.0, thinking_budget=3840, gpu_memory_utilization=0.8
        )
    )
    batch_size: int = positive(64)  # items per generation call (and per append to the predictions file)
    data_parallel: int = positive(1)  # engine replicas, each in its own process on its own GPUs
    dtype: Dtype = Dtype.auto  # of the engine's weights
    reward_timeout_s: float = at_least(0.0, 10.0, open=True)  # per math answer

    def check(self, prefix: str) -> None:
        unknown = set(self.data) - set(self.benchmarks)
        if unknown:
            raise ConfigError(
                f"data given for benchmarks not evaluated: {sorted(unknown)}",
                where=f"{prefix}data",
                fix=f"add them to {prefix}benchmarks (--benchmarks), or drop their +data entries",
            )


@dataclass
class DistillConfig:
    """`xr-nemo distill --teacher DIR --data FILE --schema medqa --out DIR [key=value …]`: rejection-
    sampled chains of thought from a teacher, as an SFT dataset."""

    teacher: str = "???"  # an HF directory (e.g. QwQ-32B) or a run directory
    data: str = "???"  # a local file/folder or a hub id, read by the `schema` benchmark's reader
    schema: str = "medqa"  # a benchmark's reader: medqa, medqa_5op, medmcqa, gsm8k, …
    out: str = "???"  # traces.jsonl, stats.json and the candidates (resumable) go here
    samples: int = positive(4)  # candidate traces per question
    keep: int = positive(1)  # correct traces kept per question
    # sampled: rejection sampling needs several different traces per question
    generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(temperature=0.7, gpu_memory_utilization=0.8)
    )
    limit: int | None = positive(None)  # first N questions
    batch_size: int = positive(64)  # questions per generation call (and per append to the candidates)
    data_parallel: int = positive(1)  # teacher replicas, each in its own process on its own GPUs
    dtype: Dtype = Dtype.auto  # of the teacher's weights
    reward_timeout_s: float = at_least(0.0, 10.0, open=True)  # per math answer
