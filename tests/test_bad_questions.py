"""Questions that would score without being answered are caught where they are read, with file:line: a
multiple-choice question with fewer than two options (any answer reads as the one option) is an error
in GRPO (a counted skip with `data.on_error=skip`) and a counted skip in evaluation and distillation; a
math gold math-verify cannot read is skipped and counted everywhere; a MedMCQA file of the other `cop`
layout is refused as a whole by GRPO too, whatever `data.on_error` says."""

import json

import pytest

from xr_nemo.data.records import DataError
from xr_nemo.errors import ConfigError
from xr_nemo.tasks.benchmark import UnreadableGold
from xr_nemo.tasks.benchmarks import get_benchmark

# golds math-verify cannot read, as Orz-Math-57k has them
UNREADABLE = ["DQ \\parallel AB", "f(x) = c"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _read(name, path):
    entries = list(get_benchmark(name).items(str(path)))
    return [e for e in entries if not isinstance(e, DataError)], [
        e for e in entries if isinstance(e, DataError)
    ]


def test_a_one_option_question_is_an_error_at_its_line_in_every_reader(tmp_path):
    medqa = _jsonl(
        tmp_path / "medqa.jsonl",
        [
            {"question": "Nerve?", "options": {"A": "Radial", "B": "Ulnar"}, "answer_idx": "A"},
            {"question": "Nerve?", "options": {"A": "Radial"}, "answer_idx": "A"},
        ],
    )
    mmlu = _jsonl(
        tmp_path / "mmlu_pro.jsonl",
        [{"question_id": 1, "question": "Q?", "options": ["only"], "answer": "A", "category": "law"}],
    )
    for name, path, line in (("medqa", medqa, 2), ("mmlu_pro", mmlu, 1)):
        _, (error,) = _read(name, path)
        assert (
            error.where == f"{path}:{line}" and "needs two options at the least; this one has 1" in error.what
        )


def test_an_unreadable_math_gold_is_skipped_at_its_line_and_counted_by_reason(tmp_path):
    from xr_nemo.eval.run import _reason

    golds = ["18", "\\frac{1}{2}", *UNREADABLE]
    path = _jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Q?", "answer": f"work\n#### {g}"} for g in golds])
    items, errors = _read("gsm8k", path)
    assert [item.gold for item in items] == ["18", "\\frac{1}{2}"]
    assert [(type(e), e.where) for e in errors] == [
        (UnreadableGold, f"{path}:3"),
        (UnreadableGold, f"{path}:4"),
    ]
    assert _reason(errors[0]) == "unreadable math gold"


def test_distillation_counts_one_option_questions_among_its_skipped_records(tmp_path):
    """SFT data made from a benchmark (`xr-nemo distill`) reads it with the evaluation's readers."""
    from xr_nemo.config.schema import DistillConfig
    from xr_nemo.distill.run import run_distill
    from xr_nemo.generation.engine import Completion
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model")
    rows = [
        {"question": "Nerve?", "options": {"A": "Radial", "B": "Ulnar"}, "answer_idx": "B"},
        {"question": "Free?", "options": {"A": "Radial"}, "answer_idx": "A"},
    ]
    data = _jsonl(tmp_path / "train.jsonl", rows)

    class Teacher:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def sample(self, prompts, seeds, sampling):
            ids = self.tokenizer.encode("<think>t</think><answer>B</answer>", add_special_tokens=False)
            return [Completion(ids, [0.0] * len(ids), finished=True) for _ in prompts]

        def close(self):
            pass

    from transformers import AutoTokenizer

    config = DistillConfig(
        teacher=str(model), data=str(data), schema="medqa", out=str(tmp_path / "out"), samples=1
    )
    stats = run_distill(config, engine=Teacher(AutoTokenizer.from_pretrained(model)))
    assert (stats["questions"], stats["traces"], stats["skipped_records"]) == (1, 1, 1)
    assert stats["problems"][0].startswith(f"{data}:2: a multiple-choice question needs two options")


@pytest.fixture
def prompts_file(tmp_path):
    def write(rows):
        return str(_jsonl(tmp_path / "prompts.jsonl", rows))

    return write


def test_grpo_refuses_a_one_option_question_at_its_line_or_skips_it_when_told(prompts_file, tiny_tokenizer):
    from xr_nemo.grpo.prompts import load_prompts

    source = prompts_file(
        [
            {"prompt": "Pick one", "options": ["yes", "no"], "answer": "A"},
            {"prompt": "Pick the one", "options": ["yes"], "answer": "A"},
        ]
    )
    with pytest.raises(DataError) as refused:
        load_prompts(source, "train", tiny_tokenizer)
    assert refused.value.where == f"{source}:2" and "data.on_error=skip" in refused.value.fix
    prompts = load_prompts(source, "train", tiny_tokenizer, on_error="skip")
    assert len(prompts) == 1 and prompts.skipped == [f"{source}:2: {refused.value.what}"]


def test_grpo_reads_benchmark_schemas_with_the_same_checks(prompts_file, tiny_tokenizer):
    from xr_nemo.grpo.prompts import load_prompts

    source = prompts_file([{"question": "Nerve?", "options": {"A": "Radial"}, "answer_idx": "A"}])
    with pytest.raises(DataError, match="needs two options"):
        load_prompts(source, "train", tiny_tokenizer, schema="medqa")


def test_grpo_skips_and_counts_unreadable_math_golds_even_when_errors_stop_the_run(tmp_path, tiny_tokenizer):
    from xr_nemo.grpo.prompts import load_prompts

    pairs = [
        [{"from": "human", "value": "Q?"}, {"from": "assistant", "ground_truth": {"value": gold}}]
        for gold in ["2", *UNREADABLE]
    ]
    orz = tmp_path / "orz.json"
    orz.write_text(json.dumps(pairs), encoding="utf-8")
    prompts = load_prompts(str(orz), "train", tiny_tokenizer)  # data.on_error=raise
    assert [item.answer for item in prompts.items] == ["2"]
    assert [entry.split(": ", 1)[0] for entry in prompts.skipped] == [f"{orz} item 1", f"{orz} item 2"]
    assert all("math-verify cannot read" in entry for entry in prompts.skipped)


def test_grpo_refuses_a_medmcqa_file_of_the_other_layout_whatever_on_error_says(prompts_file):
    from xr_nemo.grpo.prompts import load_prompts

    options = {"opa": "Radial", "opb": "Ulnar", "opc": "Median", "opd": "Axillary"}
    source = prompts_file([{"question": "Nerve?", **options, "cop": cop} for cop in (1, 4, 2)])
    with pytest.raises(ConfigError, match="medmcqa_release"):
        load_prompts(source, "train", None, schema="medmcqa", on_error="skip")
