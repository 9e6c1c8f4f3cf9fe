"""Every model family on megatron-core against Transformers: same weights (imported through `convert
import`), same logits, fp32 — text with padding, one image, two images of different sizes in a padded
batch — at TP=1, TP=2 (with and without sequence parallelism), PP=2 (through megatron-core's pipeline
schedule) and CP=2 (each rank holds half of every sequence; the logits of both halves are gathered for
the comparison). For Qwen3-VL the images exercise DeepStack (features added after the first layers,
which sit on the first pipeline stage) and the interleaved mrope; PP=2 puts its last two layers on the
second stage."""

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.models.registry import family_names

TOL = 1e-4
CASES = {
    "text_padded": [("What is 2+2?", []), ("Name a prime number greater than ten, please.", [])],
    "one_image": [("What colour is this?", [(84, 56)])],
    "two_images_padded": [("Compare the two.", [(84, 56), (56, 112)]), ("And this one?", [(56, 56)])],
}


def _padded_to(batch: dict, multiple: int) -> dict:
    """`batch` with input_ids and attention_mask padded on the right to a multiple of `multiple`."""
    extra = -batch["input_ids"].shape[1] % multiple
    pad = torch.nn.functional.pad
    return {
        **batch,
        "input_ids": pad(batch["input_ids"], (0, extra)),
        "attention_mask": pad(batch["attention_mask"], (0, extra)),
    }


def logits_worker(checkpoint_dir: str, hf_dir: str, layout: tuple[int, int, int], batches):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.distributed import context_parallel, initialize, shutdown
    from xr_nemo.models.registry import family_of

    tensor_parallel, pipeline_parallel, cp, sequence_parallel = layout
    parallel = ParallelConfig(
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        context_parallel=cp,
        sequence_parallel=sequence_parallel,
    )
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    family = family_of(hf_config)
    model = family.build_model(hf_config, parallel).eval()
    position_ids = family.position_ids(hf_config)
    load_model_weights(model, checkpoint_dir)
    results = {}
    for case, batch in batches.items():
        width = batch["input_ids"].shape[1]
        batch = _padded_to(batch, parallel.sequence_multiple)
        positions = position_ids(
            batch["input_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            attention_mask=batch["attention_mask"],
        )
        inputs = context_parallel.split_batch({"input_ids": batch["input_ids"], "position_ids": positions})

        def whole_logits(output: torch.Tensor, non_loss_data: bool = True, width=width) -> torch.Tensor:
            output = gather_from_tensor_model_parallel_region(output)
            return context_parallel.gather_sequence(output.transpose(0, 1)).transpose(0, 1)[:, :width]

        def forward_step(data_iterator, model, batch=batch, inputs=inputs):
            output = model(
                inputs["input_ids"],
                inputs["position_ids"],
                None,  # rows are right-padded: causal attention keeps real tokens off the padding
                pixel_values=batch.get("pixel_values"),
                image_grid_thw=batch.get("image_grid_thw"),
            )
            return output, whole_logits

        with torch.no_grad():
            outputs = get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter([None]),
                model=[model],
                num_microbatches=1,
                seq_length=batch["input_ids"].shape[1],
                micro_batch_size=batch["input_ids"].shape[0],
                forward_only=True,
                collect_non_loss_data=True,
            )
        if parallel_state.is_pipeline_last_stage():
            results[case] = outputs[0]
    shutdown()
    return results or None


@pytest.fixture(
    scope="module",
    params=[(name, tied) for name in family_names() for tied in (False, True)],
    ids=lambda param: f"{param[0]}-{'tied' if param[1] else 'untied'}",
)
def imported(request, tmp_path_factory):
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.registry import family_named

    from helpers.vl_inputs import vl_batch

    name, tied = request.param
    family = family_named(name)
    root = tmp_path_factory.mktemp("parity")
    hf_dir = family.build_tiny(
        root / "hf", num_heads=4, num_kv_heads=2, hidden_size=256, tie_word_embeddings=tied
    )
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    reference = family.hf_model_class.from_pretrained(hf_dir).eval()
    batches = {case: vl_batch(hf_dir, rows) for case, rows in CASES.items()}
    with torch.no_grad():
        expected = {case: reference(**batch).logits for case, batch in batches.items()}
    return str(checkpoint), str(hf_dir), batches, expected


@pytest.mark.parametrize(
    "layout",
    [(1, 1, 1, False), (2, 1, 1, False), (2, 1, 1, True), (1, 2, 1, False), (1, 1, 2, False)],
    ids=["tp1", "tp2", "tp2-sp", "pp2", "cp2"],
)
def test_logits_match_transformers(imported, layout):
    checkpoint, hf_dir, batches, expected = imported
    world = layout[0] * layout[1] * layout[2]  # sequence parallelism splits within the TP group
    results = run_distributed(logits_worker, world, checkpoint, hf_dir, layout, batches)
    (got,) = [result for result in results if result is not None][:1]
    for case, batch in batches.items():
        valid = batch["attention_mask"].bool()
        assert got[case].shape == expected[case].shape, case
        diff = (got[case][valid] - expected[case][valid]).abs().max().item()
        assert diff <= TOL, f"{case}: max abs diff {diff}"
