"""`make demo` shortened (`--quick`): every stage runs through the real CLI and leaves its checkpoints
and Hugging Face export; the report's cells — accuracies, the reasoning's restatement of the
expression, the paired tests between stages, the shuffled and blank pictures — are the ones recomputed
here from the predictions and the world's files; its charts exist; text-only CoT SFT raises accuracy on
text and on pictures above the base model's (the transfer the demo exists to show); the control takes
as many optimizer steps as the CoT SFT; the frozen embeddings stay as the base left them; and a second
run reuses every stage instead of redoing it."""

import json
import re
import subprocess
import sys
from fractions import Fraction
from math import comb

import pytest

from xr_nemo.demo.pipeline import QUICK
from xr_nemo.demo.report import STAGE_NAMES

BENCHMARKS = {"text": "arith_text", "image": "arith_image", "read": "arith_read"}
STAGES = ("base", "sft", "sft_direct", "grpo")


def _rows(predictions, prefix=""):
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return [row for row in rows if row["id"].split("-", 1)[1].startswith(prefix)]


def _accuracy(rows) -> float:
    return sum(row["correct"][0] for row in rows) / len(rows)


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _tables(report: str) -> dict[str, dict[str, list[str]]]:
    """Each section's table rows (`## title` → first cell → the other cells); "" is the headline's."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in report.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            tables.setdefault(section, {})[cells[0]] = cells[1:]
    return tables


def _embeddings(export):
    from safetensors.torch import load_file

    weights = load_file(str(next(export.glob("*.safetensors"))))
    return next(tensor for name, tensor in weights.items() if name.endswith("embed_tokens.weight"))


def _expressions(world) -> dict[str, str]:
    """Each held-out item's expression, by its prediction id, as the world's files state it: a text
    question's first line, a picture's `expression`."""
    text = (json.loads(line) for line in (world / "eval_text.jsonl").read_text().splitlines())
    image = (json.loads(line) for line in (world / "eval_image.jsonl").read_text().splitlines())
    return {
        **{f"arith_text-{row['id']}": row["question"].split("\n")[0] for row in text},
        **{f"arith_image-{row['id']}": row["expression"] for row in image},
    }


def _first_written(output: str) -> str | None:
    lines = output.split("\n")
    if len(lines) > 2 and lines[0] == "<think>" and lines[1] == "The expression:":
        return lines[2].strip()
    return None


def _mcnemar(before: list[bool], after: list[bool]) -> str:
    fixed = sum(b and not a for a, b in zip(before, after, strict=True))
    broke = sum(a and not b for a, b in zip(before, after, strict=True))
    n = fixed + broke
    probability = [Fraction(comb(n, k), 2**n) for k in range(n + 1)]
    p = float(sum(q for q in probability if q <= probability[fixed])) if n else 1.0
    return f"+{fixed} / −{broke}, p = {p:.2g}"


@pytest.mark.slow
@pytest.mark.vllm
def test_quick_demo_end_to_end_shows_transfer_and_reuses_its_stages(tmp_path):
    pytest.importorskip("vllm")
    run = tmp_path / "demo"
    command = [sys.executable, "-m", "xr_nemo.cli", "demo", "--quick", "--run-dir", str(run)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]

    for stage in STAGES:
        assert (run / stage / "hf" / "config.json").exists()
    for stage in STAGES[1:]:
        assert any((run / stage / "checkpoints").glob("step_*"))
        assert _embeddings(run / stage / "hf").equal(_embeddings(run / "base" / "hf"))
    assert len((run / "grpo" / "metrics.jsonl").read_text().splitlines()) == QUICK.grpo_steps
    cot, control = (
        [json.loads(line) for line in (run / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("sft", "sft_direct")
    )
    assert len(cot) == len(control)  # matched on optimizer steps
    mean_samples = [sum(m["samples"] for m in steps) / len(steps) for steps in (cot, control)]
    assert mean_samples[0] - 1 <= mean_samples[1] <= mean_samples[0]
    for chart in ("accuracy.png", "curves.png", "example.png"):
        assert (run / chart).read_bytes().startswith(b"\x89PNG")

    report = (run / "report.md").read_text()
    tables = _tables(report)
    cells_json = json.loads((run / "report.json").read_text())["cells"]
    accuracy = {}
    for stage in STAGES:
        name, predictions = STAGE_NAMES[stage], run / "eval" / stage / "predictions"
        cells = tables[""][name]
        for column, (modality, benchmark) in enumerate(BENCHMARKS.items()):
            value = _accuracy(_rows(predictions / f"{benchmark}.jsonl"))
            assert cells[column].startswith(_percent(value))
            accuracy[stage, modality] = value
        assert cells[3] == str(QUICK.held_out)
        assert cells_json["accuracy"][name]["picture problems"] == accuracy[stage, "image"]

        probes = run / "eval" / f"{stage}-probes" / "predictions"
        unseen, unseen_read = (
            _rows(probes / "arith_image.jsonl", "u"),
            _rows(probes / "arith_read.jsonl", "u"),
        )
        transfer = tables["Transfer beyond re-encoding"][name]
        assert transfer[0].startswith(_percent(_accuracy(unseen)))
        assert transfer[1].startswith(_percent(_accuracy(unseen_read)))
        assert transfer[2] == str(QUICK.probes)
        validation = tables["Validation"][name]
        assert validation[0].startswith(_percent(_accuracy(_rows(probes / "arith_text.jsonl"))))
        assert validation[1].startswith(_percent(_accuracy(_rows(probes / "arith_image.jsonl", "v"))))
        assert validation[2] == str(QUICK.validation)

    expressions = _expressions(run / "world")
    for stage in STAGES:
        restated = tables["Does the reasoning read the problem?"][STAGE_NAMES[stage]]
        for column, benchmark in enumerate(("arith_text", "arith_image")):
            rows = _rows(run / "eval" / stage / "predictions" / f"{benchmark}.jsonl")
            share = sum(_first_written(row["outputs"][0]) == expressions[row["id"]] for row in rows) / len(
                rows
            )
            assert restated[column].startswith(_percent(share))

    for before, after in (("base", "sft"), ("sft_direct", "sft"), ("sft", "grpo")):
        paired = tables["Paired tests between stages"][f"{STAGE_NAMES[before]} → {STAGE_NAMES[after]}"]
        for column, benchmark in enumerate(("arith_text", "arith_image")):
            first, second = (
                [
                    row["correct"][0]
                    for row in _rows(run / "eval" / stage / "predictions" / f"{benchmark}.jsonl")
                ]
                for stage in (before, after)
            )
            assert paired[column] == _mcnemar(first, second)

    sanity = tables["Sanity checks"]
    assert sanity["chance: a uniform guess among the ten answers 0–9"][0] == "10.0 %"
    final = run / "eval" / "grpo-sanity" / "predictions" / "arith_image.jsonl"
    shown = {
        f"arith_image-{row['id']}": row.get("shown_answer")
        for row in map(json.loads, (run / "world" / "sanity_image.jsonl").read_text().splitlines())
    }
    shuffled, blank = _rows(final, "s"), _rows(final, "b")
    follows = sum(row["answers"][0] == shown[row["id"]] for row in shuffled) / len(shuffled)
    grpo = STAGE_NAMES["grpo"]
    assert sanity[f"{grpo}, another problem's picture: the question's answer"][0].startswith(
        _percent(_accuracy(shuffled))
    )
    assert sanity[f"{grpo}, another problem's picture: the shown picture's answer"][0].startswith(
        _percent(follows)
    )
    assert sanity[f"{grpo}, a blank picture"][0].startswith(_percent(_accuracy(blank)))

    assert accuracy["sft", "text"] > accuracy["base", "text"]
    assert accuracy["sft", "image"] > accuracy["base", "image"]
    for claim in ("**Beyond re-encoding**", "**What it does not show**", "**Transfer**", "**Control**"):
        assert claim in report
    assert re.search(r"Transformers loaded `.*grpo/hf` and answered picture problem", report)

    again = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    for reused in ("toy world reused", "base model reused", "sft reused", "sft_direct reused", "grpo reused"):
        assert reused in again.stdout
    for evaluation in ("grpo", "grpo-probes", "grpo-sanity"):
        assert f"evaluation of {evaluation} reused" in again.stdout
    untimed = report.split("## Time per stage")[0]
    assert (run / "report.md").read_text().split("## Time per stage")[0] == untimed
