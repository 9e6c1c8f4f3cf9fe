"""`make demo` shortened (`--quick`): every stage runs through the real CLI and leaves its checkpoints
and Hugging Face export; the report's accuracies are the ones recomputed here from the predictions, its
charts exist, text-only CoT SFT raises accuracy on text and on pictures above the base model's (the
transfer the demo exists to show), the frozen embeddings stay as the base left them, and a second run
reuses every stage instead of redoing it."""

import json
import re
import subprocess
import sys

import pytest

from xr_nemo.demo.pipeline import QUICK
from xr_nemo.demo.report import STAGE_NAMES

BENCHMARKS = {"text": "arith_text", "image": "arith_image", "read": "arith_read"}


def _accuracy(predictions) -> float:
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return sum(row["correct"][0] for row in rows) / len(rows)


def _embeddings(export):
    from safetensors.torch import load_file

    weights = load_file(str(next(export.glob("*.safetensors"))))
    return next(tensor for name, tensor in weights.items() if name.endswith("embed_tokens.weight"))


@pytest.mark.slow
@pytest.mark.vllm
def test_quick_demo_end_to_end_shows_transfer_and_reuses_its_stages(tmp_path):
    pytest.importorskip("vllm")
    run = tmp_path / "demo"
    command = [sys.executable, "-m", "xr_nemo.cli", "demo", "--quick", "--run-dir", str(run)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]

    stages = ("base", "sft", "sft_direct", "grpo")
    for stage in stages:
        assert (run / stage / "hf" / "config.json").exists()
    for stage in stages[1:]:
        assert any((run / stage / "checkpoints").glob("step_*"))
        assert _embeddings(run / stage / "hf").equal(_embeddings(run / "base" / "hf"))
    assert len((run / "grpo" / "metrics.jsonl").read_text().splitlines()) == QUICK.grpo_steps
    for chart in ("accuracy.png", "curves.png", "example.png"):
        assert (run / chart).read_bytes().startswith(b"\x89PNG")

    report = (run / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in report.splitlines()
        if line.startswith("| ") and "%" in line
    }
    accuracy = {}
    for stage in stages:
        cells = rows[STAGE_NAMES[stage]]
        for column, (modality, benchmark) in enumerate(BENCHMARKS.items()):
            value = _accuracy(run / "eval" / stage / "predictions" / f"{benchmark}.jsonl")
            assert cells[column].startswith(f"{100 * value:.1f} %")
            accuracy[stage, modality] = value
        assert cells[3] == str(QUICK.held_out)
    assert accuracy["sft", "text"] > accuracy["base", "text"]
    assert accuracy["sft", "image"] > accuracy["base", "image"]
    assert "**Transfer**" in report and "**Control**" in report
    assert re.search(r"Transformers loaded `.*grpo/hf` and answered picture problem", report)

    again = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    for reused in ("toy world reused", "base model reused", "sft reused", "sft_direct reused", "grpo reused"):
        assert reused in again.stdout
    assert "evaluation of grpo reused" in again.stdout
    untimed = report.split("## Time per stage")[0]
    assert (run / "report.md").read_text().split("## Time per stage")[0] == untimed
