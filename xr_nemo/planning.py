"""Memory per GPU and expected throughput of a training layout, estimated from the model's shapes
alone (`xr-nemo plan`).

Weights are counted exactly per rank: every tensor of the Hugging Face checkpoint, split as megatron-core
splits it (vocabulary and linear layers over tensor-parallel ranks, norms replicated, layers over
pipeline stages, embedding on the first stage and output layer on the last). The vision tower is
replicated and frozen unless trained. Bytes per trained parameter: 2 (bf16 weight) + 4 (fp32 gradient
buffer) + 12 / (DP·CP) (fp32 master weight and two Adam moments, sharded by the distributed optimizer
over the data- and context-parallel ranks).

Activations are an estimate, not a count: 34·s·b·h bytes per layer and micro-batch with an attention
that keeps no [heads × s × s] scores and no recomputation (Korthikanti et al., 2022), divided by TP
with sequence parallelism and by CP; the first pipeline stage holds up to PP micro-batches in flight
under 1F1B, i.e. about all layers' worth; plus the fp32 logits and their gradient on the last stage.
Neither attention path keeps [heads × s × s] scores: Transformer Engine's fused/flash attention (ring
attention over CP) does not, nor does the local path's `scaled_dot_product_attention` per packed sample
(flash or memory-efficient kernels on a GPU). The local path keeps more, per layer: the keys and values
of the whole sequence on every head (gathered over CP, repeated from the query groups), 4·s·b·h / TP
bytes, and under CP the additive bf16 masks of the pieces of a sample that began in an earlier chunk,
one value per query-key pair and not per head: up to 2·b·s²·(2·CP + 1) / (4·CP²) bytes, when one sample
fills the row. Allocator fragmentation and communication buffers come on top: plan for 10–15 %
headroom.

Throughput is the model's training FLOPs per token — three times the forward pass: 2 FLOPs per weight
of every language-model matrix (output layer included, embedding lookup not), plus 4·L·(heads·head
dim) per key attended to — at an assumed model FLOPs utilisation (MFU) of the GPU's peak. Packed
samples attend only within themselves, so a token attends to (s + 1) / 2 keys on average in a sample of
s tokens. The MFU is an assumption until measured on the cluster (`docs/scaling.md`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PretrainedConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.config.schema import TransformerImpl
from xr_nemo.conversion.hf_checkpoint import expected_hf_shapes
from xr_nemo.models.registry import family_of

GIB = 1024**3
LONG_SEQUENCE = 8192  # tokens per sequence from which the local path's costs weigh
ATTENTION_PATHS = {
    TransformerImpl.transformer_engine: "Transformer Engine fused/flash attention (ring attention over CP)",
    TransformerImpl.local: "the local layers' scaled_dot_product_attention per packed sample, keys and "
    "values of the whole sequence on every head and CP rank",
}


@dataclass(frozen=True)
class Layout:
    """A training job's shape: the model-parallel layout as training configures it, and the rest."""

    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data_parallel: int = 1
    micro_batch_size: int = 1
    seq_length: int = 4096
    train_vision: bool = False
    transformer_impl: TransformerImpl = TransformerImpl.transformer_engine  # as `model.transformer_impl`

    @property
    def gpus(self) -> int:
        return self.parallel.model_parallel_size * self.data_parallel


@dataclass(frozen=True)
class MemoryEstimate:
    trained_parameters: int  # on the most loaded rank
    frozen_parameters: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float

    @property
    def total_gib(self) -> float:
        return (
            self.weights_gib
            + self.gradients_gib
            + self.optimizer_gib
            + self.activations_gib
            + self.logits_gib
        )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def parameters_per_stage(config: PretrainedConfig, layout: Layout) -> list[tuple[int, int]]:
    """(trained, frozen) parameters held by one tensor-parallel rank of each pipeline stage; where each
    tensor lives is its model family's `tensor_part`."""
    tensor_part = family_of(config).tensor_part
    text = config.get_text_config()
    layers, tp, pp = (
        text.num_hidden_layers,
        layout.parallel.tensor_parallel,
        layout.parallel.pipeline_parallel,
    )
    per_stage = [[0, 0] for _ in range(pp)]
    for name, shape in expected_hf_shapes(config).items():
        count = _numel(shape)
        split = count if len(shape) == 1 and "bias" not in name else count // tp  # norms are replicated
        part = tensor_part(name)
        if part == "vision":
            for stage in per_stage[:1]:  # the vision tower runs on the first stage, replicated over TP
                stage[0 if layout.train_vision else 1] += count
            continue
        if isinstance(part, int):
            stage = part * pp // layers
        elif part == "embedding":
            stage = 0
        else:  # final norm and output layer
            stage = pp - 1
        per_stage[stage][0] += split
    if config.tie_word_embeddings and pp > 1:  # megatron keeps an output copy of tied embeddings
        per_stage[-1][0] += text.vocab_size * text.hidden_size // tp
    return [(trained, frozen) for trained, frozen in per_stage]


def estimate_memory(config: PretrainedConfig, layout: Layout) -> MemoryEstimate:
    """The most loaded rank's memory (the larger of the first and last pipeline stages)."""
    text = config.get_text_config()
    stages = parameters_per_stage(config, layout)
    tokens = layout.seq_length * layout.micro_batch_size // layout.parallel.context_parallel
    split = layout.parallel.tensor_parallel if layout.parallel.sequence_parallel else 1
    layers_in_flight = text.num_hidden_layers  # 1F1B: PP micro-batches × L/PP layers on the first stage
    activations = 34 * tokens * text.hidden_size * layers_in_flight / split
    if layout.transformer_impl == TransformerImpl.local:
        activations += _local_attention_bytes(text.hidden_size, layout) * layers_in_flight
    logits = 2 * 4 * tokens * text.vocab_size / layout.parallel.tensor_parallel
    candidates = []
    for index, (trained, frozen) in enumerate(stages):
        first, last = index == 0, index == len(stages) - 1
        candidates.append(
            MemoryEstimate(
                trained_parameters=trained,
                frozen_parameters=frozen,
                weights_gib=2 * (trained + frozen) / GIB,
                gradients_gib=4 * trained / GIB,
                optimizer_gib=12 * trained / (layout.data_parallel * layout.parallel.context_parallel) / GIB,
                activations_gib=(activations if first else activations / layout.parallel.pipeline_parallel)
                / GIB,
                logits_gib=(logits if last else 0.0) / GIB,
            )
        )
    return max(candidates, key=lambda estimate: estimate.total_gib)


def _local_attention_bytes(hidden_size: int, layout: Layout) -> float:
    """What the local attention keeps per layer beyond the 34·s·b·h (see the module docstring)."""
    seq, batch = layout.seq_length, layout.micro_batch_size
    tp, cp = layout.parallel.tensor_parallel, layout.parallel.context_parallel
    keys_and_values = 4 * seq * batch * hidden_size / tp
    masks = 2 * batch * seq * seq * (2 * cp + 1) / (4 * cp * cp) if cp > 1 else 0.0
    return keys_and_values + masks


def training_flops_per_token(config: PretrainedConfig, keys_per_token: float) -> float:
    """Forward and backward FLOPs of the language model per trained token, when each token attends to
    `keys_per_token` keys (e.g. (s + 1) / 2 under a causal mask in a sample of s tokens)."""
    tensor_part = family_of(config).tensor_part
    text = config.get_text_config()
    matrices = sum(
        _numel(shape)
        for name, shape in expected_hf_shapes(config).items()
        if len(shape) == 2 and tensor_part(name) not in ("vision", "embedding")
    )
    if config.tie_word_embeddings:  # the output layer multiplies by the embedding matrix
        matrices += text.vocab_size * text.hidden_size
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    attention = 4 * text.num_hidden_layers * text.num_attention_heads * head_dim * keys_per_token
    return 3 * (2 * matrices + attention)


@dataclass(frozen=True)
class ThroughputEstimate:
    tokens_per_s_per_gpu: float
    gpus: int

    @property
    def hours_per_billion_tokens(self) -> float:
        return 1e9 / (self.tokens_per_s_per_gpu * self.gpus) / 3600


def estimate_throughput(
    config: PretrainedConfig, layout: Layout, mean_sample_length: int, mfu: float, peak_tflops: float
) -> ThroughputEstimate:
    per_token = training_flops_per_token(config, (mean_sample_length + 1) / 2)
    return ThroughputEstimate(mfu * peak_tflops * 1e12 / per_token, layout.gpus)


TABLE_HEADER = (
    "| GPUs | TP | PP | CP | DP | tokens / micro-batch | weights | gradients | optimizer | activations "
    "| logits | total (GiB / GPU) | tokens/s/GPU | hours per 10⁹ tokens |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(layout: Layout, estimate: MemoryEstimate, throughput: ThroughputEstimate) -> str:
    cells = [
        layout.gpus,
        layout.parallel.tensor_parallel,
        layout.parallel.pipeline_parallel,
        layout.parallel.context_parallel,
        layout.data_parallel,
        f"{layout.micro_batch_size}×{layout.seq_length}",
        *(
            f"{value:.1f}"
            for value in (
                estimate.weights_gib,
                estimate.gradients_gib,
                estimate.optimizer_gib,
                estimate.activations_gib,
                estimate.logits_gib,
                estimate.total_gib,
            )
        ),
        f"{throughput.tokens_per_s_per_gpu:,.0f}",
        f"{throughput.hours_per_billion_tokens:.1f}",
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def attention_note(layout: Layout) -> str:
    """The attention path the estimate assumes, and a warning when the local path runs long sequences."""
    note = f"Attention: {ATTENTION_PATHS[TransformerImpl(layout.transformer_impl)]}."
    if layout.transformer_impl == TransformerImpl.local and layout.seq_length >= LONG_SEQUENCE:
        note += (
            f"\nWarning: {layout.seq_length:,}-token sequences on the local path: attention runs sample by "
            "sample without fused kernels, and every CP rank holds the whole sequence's keys and values "
            "and, under CP, s × s masks (counted above), so the assumed MFU is optimistic. On GPUs, "
            "install Transformer Engine (make setup-gpu) and keep model.transformer_impl=auto."
        )
    return note
