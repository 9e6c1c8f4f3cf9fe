"""`xr-nemo distill` with a scripted teacher whose correctness is known per seed: exactly the correct
candidates are kept (the first `keep` per question), in the evaluation's prompt format and the released
answer format, the acceptance statistics add up, and a second run generates nothing."""

import json

from xr_nemo.generation.engine import Completion, token_ids
from xr_nemo.recipes.tiny_cpu_med import MEDQA


class SeedTeacher:
    """Right when the seed is divisible by 3 — in tags for even seeds, in words for odd ones."""

    def __init__(self, tokenizer, gold_by_question):
        self.tokenizer, self.gold_by_question, self.prompts_seen = tokenizer, gold_by_question, 0

    def sample(self, prompts, seeds, sampling):
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            text = self.tokenizer.decode(token_ids(prompt))
            gold = next(g for q, g in self.gold_by_question.items() if q in text)
            letter = gold if seed % 3 == 0 else "ABCD"[("ABCD".index(gold) + 1) % 4]
            tail = f"<answer>{letter}</answer>" if seed % 2 == 0 else f"The answer is {letter}."
            ids = self.tokenizer.encode(f"<think>seed {seed}</think>\n{tail}", add_special_tokens=False)
            out.append(Completion(ids, [0.0] * len(ids), finished=True))
        self.prompts_seen += len(prompts)
        return out

    def close(self):
        pass


def test_distill_keeps_exactly_the_correct_traces_and_resumes(tmp_path):
    from transformers import AutoTokenizer

    from xr_nemo.config.schema import DistillConfig
    from xr_nemo.data.prompt_format import training_prompt
    from xr_nemo.distill.run import run_distill
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    teacher = build_tiny_qwen25_vl(tmp_path / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    questions = [json.loads(line) for line in MEDQA.read_text().splitlines()][:8]
    gold = {q["question"]: q["answer_idx"] for q in questions}
    config = DistillConfig(
        teacher=str(teacher), data=str(MEDQA), schema="medqa", out=str(tmp_path / "out"), samples=4, limit=8
    )
    engine = SeedTeacher(tokenizer, gold)
    stats = run_distill(config, engine=engine)

    # eval's per-item seeds
    seeds = {i: [config.generation.seed + 4 * i + j for j in range(4)] for i in range(8)}
    right = {i: [s for s in seeds[i] if s % 3 == 0] for i in range(8)}
    assert stats["samples"] == 32 and stats["correct_samples"] == sum(map(len, right.values()))
    assert stats["acceptance"] == stats["correct_samples"] / 32
    assert stats["questions_solved"] == sum(bool(r) for r in right.values()) == stats["traces"]

    traces = [json.loads(line) for line in (tmp_path / "out" / "traces.jsonl").read_text().splitlines()]
    solved = [i for i in range(8) if right[i]]
    for trace, i in zip(traces, solved, strict=True):
        question = questions[i]
        user, assistant = trace["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"] == training_prompt(question["question"], question["options"])
        first = right[i][0]
        assert assistant["content"].startswith(f"<think>seed {first}</think>")
        assert assistant["content"].endswith(f"<answer>{question['answer_idx']}</answer>")

    again = SeedTeacher(tokenizer, gold)
    assert run_distill(config, engine=again) == stats
    assert again.prompts_seen == 0


def test_a_teacher_whose_template_opens_thinking_gets_the_tag_back_in_its_traces(tmp_path):
    """QwQ-32B's chat template ends the generation prompt with `<think>\n`, so its completions start
    inside the thinking: the trace must start with the tag SFT is to learn."""
    from transformers import AutoTokenizer

    from xr_nemo.distill.run import _trace
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl
    from xr_nemo.tasks.extract import template_opens_thinking

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_qwen25_vl(tmp_path / "teacher"))
    assert not template_opens_thinking(tokenizer)
    tokenizer.chat_template = tokenizer.chat_template + "{% if add_generation_prompt %}<think>\n{% endif %}"
    assert template_opens_thinking(tokenizer)
    output = "First, the drug. </think> <answer>B</answer>"
    assert _trace(output, "B", "answer_tag", opened=True) == f"<think>\n{output}"
    assert _trace(f"<think>{output}", "B", "answer_tag", opened=True) == f"<think>{output}"
    assert _trace(output, "B", "answer_tag", opened=False) == output
    # judged as the trace would be: under this template a response cut before `</think>` is unfinished,
    # though "answer is B" in its half-finished thought would be read from a baseline's whole reply
    from xr_nemo.eval.run import _extract
    from xr_nemo.tasks.benchmark import EvalItem
    from xr_nemo.tasks.benchmarks import get_benchmark

    item = EvalItem("q1", "Which drug?", "B", options={"A": "aspirin", "B": "heparin"})
    cut = "Heparin acts fast, so the answer is B. But wait, the bleeding risk"
    assert _extract(get_benchmark("medqa"), item, cut, thinking_opened=False).answer == "B"
    assert _extract(get_benchmark("medqa"), item, cut, thinking_opened=True).method == "unfinished"


def test_distill_cli_runs_a_real_teacher(tmp_path):
    """The command end to end with the tiny model as teacher (Transformers engine): whatever it
    answers, every candidate is recorded and the statistics describe them."""
    import subprocess
    import sys

    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    teacher = build_tiny_qwen25_vl(tmp_path / "teacher")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "xr_nemo.cli",
        "distill",
        "--teacher",
        str(teacher),
        "--data",
        str(MEDQA),
        "--schema",
        "medqa",
        "--out",
        str(out),
        "engine=hf",
        "limit=3",
        "samples=2",
        "max_new_tokens=8",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions" / "medqa.jsonl").read_text().splitlines()]
    assert stats["questions"] == 3 and stats["samples"] == 6 == sum(len(r["outputs"]) for r in rows)
    assert stats["correct_samples"] == sum(sum(r["correct"]) for r in rows)
    traces = (out / "traces.jsonl").read_text().splitlines()
    assert len(traces) == stats["traces"] == sum(any(r["correct"]) for r in rows)
    assert f"distilled {stats['traces']} traces" in result.stdout
