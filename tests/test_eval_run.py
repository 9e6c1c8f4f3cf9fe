"""`xr-nemo eval` end to end: every registered benchmark reads a local fixture in its real schema,
bad records are counted with file:line, scores match answers known in advance (a scripted engine that
answers every other item correctly), an interrupted run regenerates only what is missing, and the real
CLI runs the tiny model through vLLM."""

import json
import subprocess
import sys

import pytest

from xr_nemo.eval.benchmarks import REGISTRY

GSM8K = [
    {
        "question": f"Tom has {i} apples and buys {i + 3} more. How many?",
        "answer": f"{i} + {i + 3}\n#### {2 * i + 3}",
    }
    for i in range(6)
] + [{"question": "No final line", "answer": "just text"}]
MEDQA = [
    {
        "question": f"A {30 + i}-year-old presents with chest pain. Best next step?",
        "options": {"A": "ECG", "B": "Troponin", "C": "Aspirin", "D": "CT"},
        "answer_idx": "ABCD"[i % 4],
    }
    for i in range(6)
] + [{"question": "Missing answer", "options": {"A": "x", "B": "y"}}]
MMLU_PRO = [
    {
        "question_id": 100 + i,
        "question": f"Question {i} about {'health' if i % 2 else 'law'}?",
        "options": ["alpha", "beta", "gamma", "delta", "epsilon"],
        "answer": "ABCDE"[i % 5],
        "category": "health" if i % 2 else "law",
    }
    for i in range(8)
]
MEDMCQA = [
    {
        "id": f"m{i}",
        "question": f"Which nerve supplies muscle {i}?",
        "opa": "Radial",
        "opb": "Ulnar",
        "opc": "Median",
        "opd": "Axillary",
        "cop": i % 4,
        "subject_name": "Anatomy",
    }
    for i in range(6)
] + [{"id": "bad", "question": "No answer index", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}]
PUBMEDQA = [
    {
        "pubid": 1000 + i,
        "question": f"Does treatment {i} reduce mortality?",
        "context": {"contexts": [f"Background {i}.", "Results were mixed."]},
        "final_decision": ["yes", "no", "maybe"][i % 3],
    }
    for i in range(6)
]
FIXTURES = {
    "gsm8k": GSM8K,
    "medqa": MEDQA,
    "mmlu_pro": MMLU_PRO,
    "mmlu_pro_health": MMLU_PRO,
    "medmcqa": MEDMCQA,
    "pubmedqa": PUBMEDQA,
}
VALID = {"gsm8k": 6, "medqa": 6, "mmlu_pro": 8, "mmlu_pro_health": 4, "medmcqa": 6, "pubmedqa": 6}


def test_every_registered_benchmark_has_a_fixture():
    assert set(REGISTRY) == set(FIXTURES)


@pytest.fixture
def fixtures(tmp_path):
    paths = {}
    for name, rows in FIXTURES.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


class KnowingEngine:
    """Answers the question in the prompt: correctly for even-numbered calls, wrongly for odd ones."""

    def __init__(self, tokenizer, truth):
        self.tokenizer, self.truth, self.calls, self.prompts_seen = tokenizer, truth, 0, 0

    def sample(self, prompts, seeds, sampling):
        from xr_nemo.generation.engine import Completion

        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)
            question = next(q for q in self.truth if q in text)
            right, wrong = self.truth[question]
            answer = right if self.calls % 2 == 0 else wrong
            self.calls += 1
            ids = self.tokenizer.encode(
                f"<think>hm</think><answer>{answer}</answer>", add_special_tokens=False
            )
            out.append(Completion(ids, [0.0] * len(ids), finished=True))
        self.prompts_seen += len(prompts)
        return out

    def close(self):
        pass


def _truth() -> dict[str, tuple[str, str]]:
    truth = {row["question"]: (row["answer"].split("####")[1].strip(), "-1") for row in GSM8K[:6]}
    truth |= {
        row["question"]: (row["answer_idx"], "A" if row["answer_idx"] != "A" else "B") for row in MEDQA[:6]
    }
    for row in MEDMCQA[:6]:
        truth[row["question"]] = ("ABCD"[row["cop"]], "ABCD"[(row["cop"] + 1) % 4])
    for row in PUBMEDQA:  # answered in words
        truth[row["question"]] = (row["final_decision"], "no" if row["final_decision"] != "no" else "yes")
    for row in MMLU_PRO:  # answered by option text, the wrong one being the next option's
        index = "ABCDE".index(row["answer"])
        truth[row["question"]] = (row["options"][index], row["options"][(index + 1) % 5])
    return truth


def test_scores_bad_records_reports_and_resume(tmp_path, fixtures):
    from transformers import AutoTokenizer

    from xr_nemo.config.schema import EvalConfig
    from xr_nemo.eval.run import run_eval
    from xr_nemo.testing.qwen25_vl import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    config = EvalConfig(
        model=str(model),
        benchmarks=list(FIXTURES),
        data={k: str(v) for k, v in fixtures.items()},
        out_dir=str(tmp_path / "eval"),
        batch_size=3,
    )
    engine = KnowingEngine(tokenizer, _truth())
    summary = run_eval(config, engine=engine)
    for name, valid in VALID.items():
        result = summary["benchmarks"][name]
        assert result["n"] == valid
        assert result["correct"] == valid // 2  # answers alternate right/wrong; every count is even
        assert result["no_answer"] == 0
    assert summary["benchmarks"]["gsm8k"]["skipped"] == 1
    assert summary["benchmarks"]["gsm8k"]["problems"][0].startswith(f"{fixtures['gsm8k']}:7")
    assert summary["benchmarks"]["medqa"]["problems"][0].startswith(f"{fixtures['medqa']}:7")
    rows = [
        json.loads(line)
        for line in (tmp_path / "eval" / "predictions" / "medqa.jsonl").read_text().splitlines()
    ]
    assert rows[0]["methods"] == ["answer_tag"] and rows[0]["outputs"][0].startswith("<think>")
    assert all(row["correct"][0] == (row["answers"][0] == row["gold"]) for row in rows)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| medqa | 50.0 % |" in report and "| mmlu_pro_health |" in report

    # interrupted: the last two medqa rows are gone and a half-written line is left
    path = tmp_path / "eval" / "predictions" / "medqa.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + '\n{"id": "medqa-4", "outp')
    engine = KnowingEngine(tokenizer, _truth())
    again = run_eval(config, engine=engine)
    assert engine.prompts_seen == 2
    assert again["benchmarks"]["medqa"]["generated"] == 2
    assert again["benchmarks"]["gsm8k"]["generated"] == 0


def test_unknown_benchmark_is_a_clear_error(tmp_path):
    from xr_nemo.testing.qwen25_vl import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "-m", "xr_nemo.cli", "eval", "--model", str(model), "--benchmarks", "medqa,mmmlu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "unknown benchmark 'mmmlu'" in result.stderr and "mmlu_pro" in result.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_cli_evaluates_the_tiny_model_through_vllm(tmp_path, fixtures):
    pytest.importorskip("vllm")
    from xr_nemo.testing.qwen25_vl import TinyQwen25VLSpec, build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model", TinyQwen25VLSpec(num_kv_heads=2))
    data = [f"+data.{name}={path}" for name, path in fixtures.items()]
    command = [
        sys.executable,
        "-m",
        "xr_nemo.cli",
        "eval",
        "--model",
        str(model),
        "--benchmarks",
        ",".join(FIXTURES),
    ]
    command += [
        *data,
        "max_new_tokens=24",
        "limit=4",
        "gpu_memory_utilization=0.05",
        f"out_dir={tmp_path / 'eval'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {name: r["n"] for name, r in summary["benchmarks"].items()} == {
        n: min(4, v) for n, v in VALID.items()
    }
    for name in FIXTURES:
        rows = (tmp_path / "eval" / "predictions" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == summary["benchmarks"][name]["n"]
    assert (tmp_path / "eval" / "report.md").exists()
    assert "medqa:" in result.stdout


def test_a_run_without_an_export_is_exported_from_its_latest_checkpoint(tmp_path):
    import torch
    from safetensors.torch import load_file

    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.errors import ConfigError
    from xr_nemo.eval.run import model_directory
    from xr_nemo.testing.qwen25_vl import build_tiny_qwen25_vl

    original = build_tiny_qwen25_vl(tmp_path / "original")
    run = tmp_path / "run"
    import_hf(original, run / "checkpoints" / "step_3", progress=False)
    (run / "checkpoints" / "latest").write_text("step_3\n")
    exported = model_directory(str(run))
    assert exported == run / "hf"
    got, want = load_file(str(exported / "model.safetensors")), load_file(str(original / "model.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert model_directory(str(run)) == exported  # reused, not exported again
    with pytest.raises(ConfigError, match="neither"):
        model_directory(str(tmp_path / "empty"))
