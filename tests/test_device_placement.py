"""Every tensor that reaches the model or a collective is on the rank's device: one SFT step and one GRPO
step (rollouts from the reference engine, old and reference log-probabilities, the update) run through
the stages' own entry points with `meta` standing in for the GPU (tests/helpers/accelerator_stand_in.py):
a host tensor meeting the model fails the op, a host tensor given to a collective is a violation."""

from __future__ import annotations

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams

import xr_nemo.distributed.runtime as runtime
import xr_nemo.grpo.run as grpo_run
import xr_nemo.training.setup as training_setup
from xr_nemo.distributed.devices import to_device
from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.recipes import tiny_cpu

from helpers.accelerator_stand_in import ACCELERATOR, DevicePlacementError, accelerator_stand_in


def _quiet(config, run_dir: str):
    config.run.dir = run_dir
    config.trainer.max_steps = 1
    config.trainer.progress = False
    config.checkpoint.every_steps = None
    config.checkpoint.at_end = False
    config.export.hf = False
    return config


def _sft_config(root: str):
    config = _quiet(tiny_cpu.sft(), f"{root}/sft")
    config.model.hf_dir = f"{root}/tiny_model"
    config.trainer.global_batch_size = 2
    config.trainer.max_steps = 2  # the plateau rule decides (a broadcast) from its second step
    config.trainer.stop_on_plateau.metric = "loss"
    config.trainer.stop_on_plateau.window = 1
    config.stragglers.report_every = 1  # step times are gathered
    return config


def _grpo_config(root: str):
    config = _quiet(tiny_cpu.grpo(), f"{root}/grpo")
    config.model.checkpoint = None
    config.model.hf_dir = f"{root}/tiny_model"
    config.model.synthetic = "tiny"
    config.rollout.engine = "reference"
    config.rollout.n = 2
    config.rollout.max_new_tokens = 3
    config.trainer.prompts_per_step = 2
    config.trainer.micro_batch_size = 2
    config.grpo.kl_coef = 0.01  # the reference model's log-probabilities too
    return config


def stage_on_stand_in(stage: str, root: str) -> dict:
    """One rank running `stage` with the stand-in as its device; the collectives it made and the
    violations. The job keeps the stand-in's device when it initialises, and weights are not loaded
    (the `meta` device holds none; loading is tested elsewhere). Run in a `run_distributed` rank, which
    sees no GPU: the stand-in is then the only accelerator on any machine."""
    from xr_nemo.sft.run import run_sft

    run, config = (run_sft, _sft_config(root)) if stage == "sft" else (grpo_run.run_grpo, _grpo_config(root))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "use_device", lambda device: None)
        patch.setattr(training_setup, "load_model_weights", lambda model, path: None)
        patch.setattr(grpo_run, "load_model_weights", lambda model, path: None)
        with accelerator_stand_in(patch) as record:
            run(config)
    return {"collectives": sorted({name for name, _ in record.calls}), "violations": record.violations}


@pytest.mark.parametrize(
    ("stage", "collectives"), [("sft", {"all_reduce", "broadcast", "all_gather"}), ("grpo", {"all_reduce"})]
)
def test_a_training_step_keeps_every_tensor_on_the_device(tmp_path, stage, collectives):
    (result,) = run_distributed(stage_on_stand_in, 1, stage, str(tmp_path))
    assert not result["violations"], "\n\n".join(result["violations"])
    assert collectives <= set(result["collectives"]), "the recorder is not in the path of these collectives"


def test_the_hf_engine_feeds_its_model_on_the_device(monkeypatch, tmp_path):
    """Its inputs (ids, masks, image grids) reach the model on the model's device. (Generation itself
    decides when to stop from values a `meta` tensor does not hold, so one forward pass stands in.)"""
    from xr_nemo.generation.hf_engine import HFEngine
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    build_tiny_qwen25_vl(tmp_path, TinyQwen25VLSpec())
    with accelerator_stand_in(monkeypatch):
        engine = HFEngine(tmp_path)
        inputs = engine._inputs([[1, 2, 3], [4, 5]])
        assert engine.model.device == ACCELERATOR
        assert {value.device for value in inputs.values()} == {ACCELERATOR}
        engine.model(**inputs)


def test_the_stand_in_catches_a_host_batch_and_a_host_collective(monkeypatch):
    """The checks above can fail: a host tensor into an accelerator model raises; a host tensor into a
    collective is recorded."""
    import torch.distributed as dist

    embedding = torch.nn.Embedding(8, 4).to(ACCELERATOR)
    with accelerator_stand_in(monkeypatch) as record:
        with pytest.raises(DevicePlacementError, match="embedding"):
            embedding(torch.tensor([[1, 2]]))
        embedding(to_device(torch.tensor([[1, 2]])))
        dist.all_reduce(torch.ones(2))
        dist.all_reduce(torch.ones(2, device=ACCELERATOR))
    assert len(record.calls) == 2 and len(record.violations) == 1


def test_to_device_moves_packed_boundaries_and_nested_tensors(monkeypatch):
    bounds = torch.tensor([0, 3, 8], dtype=torch.int32)
    batch = {
        "tokens": torch.zeros(1, 8, dtype=torch.long),
        "packed_seq_params": PackedSeqParams(
            qkv_format="sbhd", cu_seqlens_q=bounds, cu_seqlens_kv=bounds, max_seqlen_q=5, max_seqlen_kv=5
        ),
        "images": [torch.zeros(2, 3)],
        "count": 3,
    }
    moved = to_device(batch, ACCELERATOR)
    assert moved["tokens"].is_meta and moved["images"][0].is_meta and moved["count"] == 3
    params = moved["packed_seq_params"]
    assert params.cu_seqlens_q.is_meta and params.cu_seqlens_kv.is_meta and params.max_seqlen_q == 5
    assert batch["tokens"].device.type == "cpu"  # the host batch is left as it was
