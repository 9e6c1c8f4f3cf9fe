"""The memory planner's per-rank parameter counts equal those of our megatron-core model built at the
same layout (TP=2, PP=2, tied and untied embeddings) for every model family, and its whole-model counts
equal the published Qwen2.5-VL-7B's and Qwen3-VL-8B's. Its training FLOPs per token equal what
PyTorch's FLOP counter counts in Transformers' forward and backward pass. It names the attention path it
assumes, counts the local path's extra keys and values, and warns when the local path runs long
sequences."""

import pytest

from xr_nemo.config import ParallelConfig
from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.models.registry import family_names

# Qwen/Qwen3-VL-8B-Instruct's safetensors index: total_size 17,534,247,392 bytes of bfloat16
QWEN3_VL_8B_PARAMETERS = 17_534_247_392 // 2


def _count_worker(hf_dir, tensor_parallel, pipeline_parallel):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from transformers import AutoConfig

    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.registry import family_of

    parallel = ParallelConfig(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel)
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = family_of(hf_config).build_model(hf_config, parallel)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stage = parallel_state.get_pipeline_model_parallel_rank()
    rank = dist.get_rank()
    shutdown()
    return rank, stage, trained, frozen


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize(("tensor_parallel", "pipeline_parallel", "tied"), [(2, 1, False), (1, 2, True)])
def test_parameters_per_rank_match_the_built_model(
    tmp_path, family, tied, tensor_parallel, pipeline_parallel
):
    from transformers import AutoConfig

    from xr_nemo.models.registry import family_named
    from xr_nemo.planning import Layout, parameters_per_stage

    hf_dir = family_named(family).build_tiny(
        tmp_path / "model", num_layers=4, num_kv_heads=2, tie_word_embeddings=tied
    )
    world = tensor_parallel * pipeline_parallel
    built = run_distributed(_count_worker, world, str(hf_dir), tensor_parallel, pipeline_parallel)
    layout = Layout(ParallelConfig(tensor_parallel, pipeline_parallel))
    planned = parameters_per_stage(AutoConfig.from_pretrained(hf_dir), layout)
    for _, stage, trained, frozen in built:
        assert planned[stage] == (trained, frozen)


def test_the_7b_count_is_the_published_one():
    from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config
    from xr_nemo.planning import Layout, estimate_memory, parameters_per_stage

    trained, frozen = parameters_per_stage(qwen25_vl_7b_config(), Layout())[0]
    assert trained + frozen == 8_292_166_656  # Qwen/Qwen2.5-VL-7B-Instruct's safetensors index
    estimate = estimate_memory(
        qwen25_vl_7b_config(),
        Layout(ParallelConfig(4, sequence_parallel=True), data_parallel=2, seq_length=16384),
    )
    assert estimate.trained_parameters < trained / 3  # split over four tensor-parallel ranks


@pytest.mark.parametrize(
    ("family", "sizes"),
    [
        ("qwen2_5_vl", dict(num_kv_heads=1)),
        ("qwen2_5_vl", dict(num_kv_heads=2, tie_word_embeddings=True)),
        ("qwen3_vl", dict(num_heads=4, num_kv_heads=2)),  # 4 heads of 64 on a 128-wide model
    ],
    ids=["untied-gqa", "tied-mha", "qwen3-wide-heads"],
)
def test_training_flops_per_token_equal_the_counted_flops(tmp_path, family, sizes):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig

    from xr_nemo.models.registry import family_named
    from xr_nemo.planning import training_flops_per_token

    hf_dir = family_named(family).build_tiny(tmp_path / "model", **sizes)
    # eager attention: plain matmuls the counter sees, over every key (the causal mask is applied after)
    model = family_named(family).hf_model_class.from_pretrained(hf_dir, attn_implementation="eager")
    batch, length = 2, 48
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 400, (batch, length))).logits.sum().backward()
    counted = counter.get_total_flops() / (batch * length)
    assert training_flops_per_token(AutoConfig.from_pretrained(hf_dir), keys_per_token=length) == counted


def test_the_qwen3_vl_8b_count_is_the_published_one():
    from xr_nemo.models.qwen3_vl.published import qwen3_vl_8b_config
    from xr_nemo.planning import Layout, parameters_per_stage

    trained, frozen = parameters_per_stage(qwen3_vl_8b_config(), Layout())[0]
    assert trained + frozen == QWEN3_VL_8B_PARAMETERS


def test_plan_prints_memory_and_throughput_per_layout(capsys):
    from xr_nemo.cli import main
    from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config
    from xr_nemo.planning import Layout, estimate_throughput

    assert main(["plan", "--nodes", "1,2", "--mfu", "0.5", "--mean-sample-length", "2048"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 8 ") or line.startswith("| 16 ")]
    assert len(rows) == 2
    expected = estimate_throughput(
        qwen25_vl_7b_config(), Layout(ParallelConfig(4, sequence_parallel=True), 2), 2048, 0.5, 989.0
    )
    assert f"| {expected.tokens_per_s_per_gpu:,.0f} | {expected.hours_per_billion_tokens:.1f} |" in rows[0]
    assert "assumed 50% MFU" in printed
    assert "Attention: Transformer Engine fused/flash attention" in printed
    assert main(["plan", "--nodes", "1", "--transformer-impl", "local"]) == 0
    assert "Warning: 16,384-token sequences on the local path" in capsys.readouterr().out


def test_the_local_path_adds_whole_sequence_keys_and_values_and_is_named():
    from xr_nemo.config.schema import TransformerImpl
    from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config
    from xr_nemo.planning import GIB, Layout, attention_note, estimate_memory

    config = qwen25_vl_7b_config()
    parallel = ParallelConfig(4, context_parallel=2, sequence_parallel=True)
    te = Layout(parallel, data_parallel=1, seq_length=16384)
    local = Layout(parallel, data_parallel=1, seq_length=16384, transformer_impl=TransformerImpl.local)
    # per layer (28): keys and values of all 16,384 tokens in bf16 on the 28 heads (hidden 3,584) over
    # TP=4; and bf16 masks: at CP=2 a rank holds chunks 1 and 2 of 4, whose queries (4,096 each) see
    # 8,192 and 12,288 keys
    keys_and_values = 4 * 16384 * 3584 / 4
    masks = 2 * 4096 * (8192 + 12288)
    extra = 28 * (keys_and_values + masks) / GIB
    difference = estimate_memory(config, local).activations_gib - estimate_memory(config, te).activations_gib
    assert difference == pytest.approx(extra)
    no_cp = Layout(ParallelConfig(4, sequence_parallel=True), seq_length=16384, transformer_impl="local")
    no_cp_te = Layout(ParallelConfig(4, sequence_parallel=True), seq_length=16384)
    difference = (
        estimate_memory(config, no_cp).activations_gib - estimate_memory(config, no_cp_te).activations_gib
    )
    assert difference == pytest.approx(28 * keys_and_values / GIB)
    assert "Transformer Engine fused/flash attention" in attention_note(te)
    assert "Warning" not in attention_note(te)
    assert "local layers' scaled_dot_product_attention per packed sample" in attention_note(local)
    assert "Warning: 16,384-token sequences on the local path" in attention_note(local)
    short = Layout(parallel, seq_length=4096, transformer_impl=TransformerImpl.local)
    assert "Warning" not in attention_note(short)
