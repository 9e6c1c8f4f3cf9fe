"""The X-Reasoner-Med continuation at toy size, through the CLI: medical SFT on the bundled traces from
an X-Reasoner-style run, then GRPO with the multiple-choice reward on the bundled MedQA questions (read
by the `medqa` reader) from the SFT run; both learn and export."""

import json
import subprocess
import sys

import pytest

from xr_nemo.recipes import xreasoner_7b, xreasoner_med_7b


def _cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", *args], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_7b_recipes_continue_x_reasoner_on_medqa():
    sft, grpo = xreasoner_med_7b.sft(), xreasoner_med_7b.grpo()
    assert sft.model.checkpoint == "runs/xreasoner_7b_grpo" and sft.data.schema == "messages"
    assert grpo.model.checkpoint == sft.run.dir and grpo.data.schema == "medqa"
    assert grpo.reward.correctness == "choice"


def test_both_7b_sft_recipes_have_the_papers_counts():
    """Appendix B.1: every dataset 4 epochs; 4 sequences per device on 32 GPUs, 128 samples per step."""
    for sft in (xreasoner_7b.sft(), xreasoner_med_7b.sft()):
        trainer = sft.trainer
        assert (trainer.epochs, trainer.global_batch_samples, trainer.global_batch_size) == (4, 128, None)
        assert sft.data.max_length == 4096


@pytest.mark.slow
@pytest.mark.vllm
def test_tiny_medical_continuation_sft_then_grpo(tmp_path):
    pytest.importorskip("vllm")
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model", TinyQwen25VLSpec(num_kv_heads=2))
    x_reasoner = tmp_path / "x_reasoner"
    import_hf(model, x_reasoner / "checkpoints" / "step_1", progress=False)
    (x_reasoner / "checkpoints" / "latest").write_text("step_1\n")

    sft = tmp_path / "med_sft"
    _cli(
        "sft",
        "--recipe",
        "tiny_cpu_med",
        f"run.dir={sft}",
        f"model.checkpoint={x_reasoner}",
        "trainer.epochs=2",
    )
    losses = [m["loss"] for m in _metrics(sft)]
    assert losses[-1] < losses[0]
    assert (sft / "hf" / "config.json").exists()

    grpo = tmp_path / "med_grpo"
    _cli(
        "grpo",
        "--recipe",
        "tiny_cpu_med",
        f"run.dir={grpo}",
        f"model.checkpoint={sft}",
        "trainer.max_steps=2",
        "rollout.max_new_tokens=16",
    )
    steps = _metrics(grpo)
    assert [m["step"] for m in steps] == [1, 2]
    assert all(0.0 <= m["reward_mean"] <= 1.0 for m in steps)
    assert (grpo / "hf" / "config.json").exists()
