"""FP8 shapes: Transformer Engine's FP8 GEMMs take token counts in multiples of 16 (MXFP8: 32, its
scaling block), so with `model.fp8` set every micro-batch's sequences are padded to a length whose slice
on each rank (1/CP of it, 1/TP of that under sequence parallelism) is such a multiple, whatever the
micro-batch size; SFT and GRPO both pad to it, and a fixed pipeline length is checked against it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from xr_nemo.config import ParallelConfig
from xr_nemo.config.overrides import apply_overrides
from xr_nemo.config.schema import FP8_TOKEN_MULTIPLE, FP8Recipe, GRPOConfig, ModelConfig, SFTConfig
from xr_nemo.data.packing import collate, text_position_ids
from xr_nemo.distributed.context_parallel import split_sequence
from xr_nemo.errors import ConfigError
from xr_nemo.generation.engine import Completion
from xr_nemo.grpo import run as grpo_run
from xr_nemo.grpo.batch import Sample
from xr_nemo.sft import run as sft_run

LAYOUTS = [
    # parallel sizes, FP8 recipe (None: bf16), the padding multiple
    ({}, None, 1),
    ({}, "delayed", 16),
    ({}, "mxfp8", 32),
    ({"tensor_parallel": 2}, "delayed", 16),  # without SP every TP rank has whole sequences
    ({"context_parallel": 2}, None, 4),
    ({"context_parallel": 2}, "delayed", 32),
    ({"tensor_parallel": 2, "sequence_parallel": True}, "tensorwise", 32),
    ({"tensor_parallel": 2, "sequence_parallel": True, "context_parallel": 2}, "blockwise", 64),
    ({"context_parallel": 4}, "mxfp8", 128),
]


def _config(parallel: dict, recipe: str | None, kind: type = SFTConfig):
    model = ModelConfig(fp8=None if recipe is None else "hybrid", fp8_recipe=recipe or "delayed")
    return kind(model=model, parallel=ParallelConfig(**parallel))


@pytest.mark.parametrize(("parallel", "recipe", "multiple"), LAYOUTS)
def test_every_rank_s_slice_of_a_padded_sequence_is_a_token_count_fp8_takes(parallel, recipe, multiple):
    config = _config(parallel, recipe)
    assert config.sequence_multiple == multiple
    layout = config.parallel
    sp_ranks = layout.tensor_parallel if layout.sequence_parallel else 1
    for longest in range(1, 130):  # one row: the strictest micro-batch
        batch = collate([[(np.arange(longest + 1), np.ones(longest + 1))]], 0, multiple_of=multiple)
        width = batch["tokens"].shape[1]
        assert width % layout.sequence_multiple == 0 and width - longest < multiple
        for cp_rank in range(layout.context_parallel):
            local = split_sequence(batch["tokens"], 1, cp_rank, layout.context_parallel).numel()
            assert local % sp_ranks == 0
            if recipe is not None:
                assert (local // sp_ranks) % FP8_TOKEN_MULTIPLE[FP8Recipe(recipe)] == 0, (longest, cp_rank)


def test_sft_pads_its_micro_batches_for_fp8(monkeypatch):
    monkeypatch.setattr(sft_run.parallel_state, "get_data_parallel_rank", lambda: 0)
    monkeypatch.setattr(sft_run.parallel_state, "get_data_parallel_world_size", lambda: 1)
    lengths = [6, 10]  # 5 and 9 positions
    dataset = SimpleNamespace(sample=lambda i: (np.arange(lengths[i]), np.ones(lengths[i])))
    plan = SimpleNamespace(microbatches=lambda step, rank, size, micro: [[[0], [1]]])

    def width(recipe: str | None) -> int:
        source = sft_run._microbatch_source(_config({}, recipe), dataset, plan, 0, text_position_ids)
        (batch,) = source(0)
        return batch["tokens"].shape[1]

    assert (width(None), width("delayed"), width("mxfp8")) == (9, 16, 32)


def test_grpo_pads_its_micro_batches_for_fp8(monkeypatch):
    monkeypatch.setattr(grpo_run.parallel_state, "get_pipeline_model_parallel_world_size", lambda: 1)
    samples = [Sample([1, 2, 3], Completion([4, 5, 6, 7], [-0.5] * 4), 1.0) for _ in range(2)]
    monkeypatch.setattr(grpo_run, "_samples", lambda config, rollouts, prompts: samples)
    rollouts = SimpleNamespace(kept_positions=[0], kept_total=1)

    def widths(recipe: str | None) -> set[int]:
        config = _config({}, recipe, GRPOConfig)
        config.rollout.n = len(samples)  # one prompt's group
        stage = grpo_run.GRPOStage(
            config, SimpleNamespace(wrapped=None), None, SimpleNamespace(prompts=[0]), 0
        )
        return {
            batch["tokens"].shape[1] for update in stage._updates(rollouts) for batch in update.microbatches
        }

    assert (widths(None), widths("delayed"), widths("mxfp8")) == ({6}, {16}, {32})


def test_a_pipeline_length_fp8_cannot_take_is_refused_before_launch(tmp_path):
    required = ["model.hf_dir=model", "data.train=data.jsonl", f"run.dir={tmp_path / 'run'}"]
    layout = ["parallel.pipeline_parallel=2", "trainer.seq_length=24", "model.fp8=hybrid"]
    with pytest.raises(ConfigError, match=r"trainer\.seq_length 24 is not a multiple of 16") as error:
        sft_run.check_config(apply_overrides(SFTConfig(), [*required, *layout]))
    assert "FP8" in str(error.value) and "set trainer.seq_length to a multiple of 16" in str(error.value)


def test_fp8_rollouts_from_the_reference_engine_are_refused_before_launch(tmp_path):
    required = ["data.train=prompts.jsonl", f"run.dir={tmp_path / 'run'}", "model.fp8=hybrid"]
    with pytest.raises(ConfigError, match="reference engine generates with the training model"):
        grpo_run.check_config(apply_overrides(GRPOConfig(), [*required, "rollout.engine=reference"]))
