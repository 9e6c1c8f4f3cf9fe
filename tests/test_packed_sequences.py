"""Packed sequences travel as boundaries: micro-batches of two rows, each packing one or two samples
(images among them) and padding, give the loss and gradients of every sample run alone with plain causal
attention — fp32, within 1e-5 — in one process and at TP=2, PP=2 and CP=2."""

from functools import partial

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

TOL = 1e-5
SAMPLES = [
    ("What colour is this?", [(56, 56)]),
    ("Name a prime number greater than ten, please.", []),
    ("Compare the two.", [(84, 56), (56, 56)]),
    ("And this one?", [(56, 84)]),
    ("Say hello.", []),
    ("Count to five, slowly.", []),
]
ROWS = [[[0, 1], [2]], [[3, 4], [5]]]  # micro-batches of rows of sample indices
MULTIPLE = 4  # what CP=2 splits; the same length in every layout


def _micro_batches(hf_config, samples: list[dict], packed: bool) -> list[dict]:
    """SFT micro-batches through `collate`, with the images of their samples in order; unpacked: one
    sample per micro-batch and no packed-sequence parameters (plain causal attention)."""
    import numpy as np

    from xr_nemo.data.packing import collate
    from xr_nemo.models.qwen25_vl.rope_index import mrope_position_ids

    groups = ROWS if packed else [[[index]] for index in range(len(samples))]
    longest = max(sum(samples[i]["input_ids"].shape[1] - 1 for i in row) for rows in groups for row in rows)
    batches = []
    for rows in groups:
        chosen = [samples[i] for row in rows for i in row]
        grids = iter(sample.get("image_grid_thw") for sample in chosen)  # collate's order of samples

        def positions(ids: torch.Tensor, grids=grids) -> torch.Tensor:
            return mrope_position_ids(
                ids,
                image_token_id=hf_config.image_token_id,
                spatial_merge_size=hf_config.vision_config.spatial_merge_size,
                image_grid_thw=next(grids),
            )

        rows_of_samples = [
            [(samples[i]["input_ids"][0].numpy(), np.ones(samples[i]["input_ids"].shape[1])) for i in row]
            for row in rows
        ]
        length = -(-longest // MULTIPLE) * MULTIPLE if packed else None
        batch = collate(rows_of_samples, pad_id=0, length=length, position_ids=positions)
        if not packed:
            del batch["packed_seq_params"]
        images = [sample for sample in chosen if "pixel_values" in sample]
        if images:
            batch["pixel_values"] = torch.cat([sample["pixel_values"] for sample in images])
            batch["image_grid_thw"] = torch.cat([sample["image_grid_thw"] for sample in images])
        batches.append(batch)
    return batches


def training_worker(
    checkpoint_dir: str, hf_dir: str, layout: tuple[int, int, int], samples, packed: bool, reference=None
) -> dict:
    """Loss (per token) and gradients of one forward/backward pass through megatron-core's schedule,
    reduced as training reduces them: the gradients keyed by single-process names, or, given the
    `reference`, the max abs difference of each of this rank's gradients from its slice of them."""
    import re

    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.conversion.sharding import shard_for_this_rank
    from xr_nemo.distributed import context_parallel, initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel
    from xr_nemo.sft.step import loss_func
    from xr_nemo.training.loop import run_schedule, summed_report

    tensor_parallel, pipeline_parallel, cp = layout
    parallel = ParallelConfig(
        tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel, context_parallel=cp
    )
    initialize(parallel, seed=0)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = Qwen25VLModel(hf_config, parallel)
    load_model_weights(model, checkpoint_dir)
    model.config.calculate_per_token_loss = True
    model.config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model
    )
    batches = [context_parallel.split_batch(b) for b in _micro_batches(hf_config, samples, packed)]

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = model(
            batch["tokens"],
            batch["position_ids"],
            None,
            labels=batch["labels"],
            pixel_values=batch.get("pixel_values"),
            image_grid_thw=batch.get("image_grid_thw"),
            packed_seq_params=batch.get("packed_seq_params"),
        )
        return output, partial(loss_func, batch["loss_mask"])

    ddp.zero_grad_buffer()
    loss_sum, tokens = summed_report(run_schedule(forward_step, ddp, batches, False), "loss", 2).tolist()
    offset = get_transformer_layer_offset(model.config)
    grads = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # the frozen vision tower
        single = re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) + offset}.", name)
        if reference is None:
            grads[single] = param.main_grad.clone()
        else:
            gated = model.config.gated_linear_unit
            expected = shard_for_this_rank(reference["grads"][single], param, name, gated)
            grads[single] = (param.main_grad - expected).abs().max().item()
    shutdown()
    return {"loss": loss_sum / tokens, "tokens": tokens, "grads": grads}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model with grouped-query attention, its imported checkpoint, the samples, and the
    reference: each sample alone, in one process."""
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    from helpers.vl_inputs import vl_batch

    root = tmp_path_factory.mktemp("packed")
    hf_dir = build_tiny_qwen25_vl(root / "hf", TinyQwen25VLSpec(num_heads=4, num_kv_heads=2))
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    samples = [vl_batch(hf_dir, [row]) for row in SAMPLES]
    args = (str(checkpoint), str(hf_dir))
    (reference,) = run_distributed(training_worker, 1, *args, (1, 1, 1), samples, False)
    return args, samples, reference


@pytest.mark.parametrize(
    "layout", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)], ids=["packed", "tp2", "pp2", "cp2"]
)
def test_packed_micro_batches_give_each_samples_own_loss_and_gradients(setup, layout):
    args, samples, reference = setup
    world = layout[0] * layout[1] * layout[2]
    results = run_distributed(training_worker, world, *args, layout, samples, True, reference)
    checked = set()
    for rank, result in enumerate(results):
        assert result["tokens"] == reference["tokens"]
        assert abs(result["loss"] - reference["loss"]) <= TOL, (rank, result["loss"], reference["loss"])
        worst = max(result["grads"], key=result["grads"].get)
        assert result["grads"][worst] <= TOL, f"rank {rank}: {worst} differs by {result['grads'][worst]}"
        checked |= set(result["grads"])
    assert checked == set(reference["grads"])
