"""`make demo` shortened (`--quick`): every stage runs through the real CLI and leaves its checkpoints
and Hugging Face export; the report's accuracies are the ones recomputed here from the predictions, its
charts exist, and a second run reuses every stage instead of redoing it."""

import json
import re
import subprocess
import sys

import pytest

from xr_nemo.demo.pipeline import QUICK


def _accuracy(predictions) -> float:
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return sum(row["correct"][0] for row in rows) / len(rows)


@pytest.mark.slow
@pytest.mark.vllm
def test_quick_demo_end_to_end_and_reuse(tmp_path):
    pytest.importorskip("vllm")
    run = tmp_path / "demo"
    command = [sys.executable, "-m", "xr_nemo.cli", "demo", "--quick", "--run-dir", str(run)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]

    for stage in ("base", "sft", "grpo"):
        assert (run / stage / "hf" / "config.json").exists()
        assert any((run / stage / "hf").glob("*.safetensors"))
    for stage in ("sft", "grpo"):
        assert any((run / stage / "checkpoints").glob("step_*"))
    grpo_metrics = (run / "grpo" / "metrics.jsonl").read_text().splitlines()
    assert len(grpo_metrics) == QUICK.grpo_steps
    for chart in ("accuracy.png", "curves.png"):
        assert (run / chart).read_bytes().startswith(b"\x89PNG")

    report = (run / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in report.splitlines()
        if line.startswith("| ") and "%" in line
    }
    for stage, label in (("base", "base"), ("sft", "SFT (text CoT)"), ("grpo", "SFT + GRPO (text)")):
        text = _accuracy(run / "eval" / stage / "predictions" / "arith_text.jsonl")
        image = _accuracy(run / "eval" / stage / "predictions" / "arith_image.jsonl")
        assert rows[label][0] == f"{100 * text:.1f} %" and rows[label][2] == f"{100 * image:.1f} %"
        assert rows[label][4] == str(QUICK.held_out)
    assert "Does text-only reasoning transfer to images?" in report
    assert re.search(r"Transformers loaded `.*grpo/hf` and answered picture problem", report)

    again = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    for reused in (
        "toy world reused",
        "base model reused",
        "SFT reused",
        "GRPO reused",
        "evaluation of grpo reused",
    ):
        assert reused in again.stdout
    untimed = report.split("## Time per stage")[0]
    assert (run / "report.md").read_text().split("## Time per stage")[0] == untimed
