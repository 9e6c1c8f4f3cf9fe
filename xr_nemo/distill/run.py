"""`xr-nemo distill`: chains of thought from a teacher, kept only when their answer is right.

X-Reasoner-Med's SFT data are MedQA questions answered by a stronger reasoning model (QwQ-32B), kept by
rejection sampling. Distillation is a sampled evaluation of the teacher followed by a filter: the
questions are read by a benchmark's reader (`schema`), `samples` candidates per question are generated
and judged exactly as `xr-nemo eval` judges them (and saved, resumably, in
`<out>/predictions/<schema>.jsonl`; the teacher is prompted with the evaluation templates), and the
first `keep` correct ones become `traces.jsonl` records in the `messages` schema, the question in the
paper's training template as SFT and GRPO see it. A trace whose answer was found outside `<answer>`
tags gets `<answer>X</answer>` appended, and one from a teacher whose chat template opens `<think>`
itself (QwQ-32B) gets that opening tag back, so SFT teaches the released format.

Candidates carry evaluation's record of what produced them, the teacher's identity first: a rerun into
the same `--out` with another teacher, other settings or edited questions generates those candidates
again, and `traces.jsonl` (rewritten every run) holds only candidates of this teacher.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer

from xr_nemo.config.bounds import validate
from xr_nemo.config.schema import DistillConfig, EvalConfig
from xr_nemo.data.prompt_format import training_prompt
from xr_nemo.eval.reuse import announce_plans, current_rows, producers
from xr_nemo.eval.run import generate, load_items, model_directory
from xr_nemo.generation.engine import Engine
from xr_nemo.io.atomic_dir import write_text_atomically
from xr_nemo.tasks.benchmarks import get_benchmark
from xr_nemo.tasks.extract import template_opens_thinking


def _as_evaluation(config: DistillConfig, teacher: Path) -> EvalConfig:
    """The sampled evaluation that distillation is."""
    return EvalConfig(
        model=str(teacher),
        benchmarks=[config.schema],
        data={config.schema: config.data},
        out_dir=config.out,
        limit=config.limit,
        samples=config.samples,
        generation=config.generation,
        batch_size=config.batch_size,
        data_parallel=config.data_parallel,
        dtype=config.dtype,
        reward_timeout_s=config.reward_timeout_s,
    )


def _in_answer_format(output: str, answer: str, method: str) -> str:
    return output if method == "answer_tag" else f"{output.rstrip()}\n<answer>{answer}</answer>"


def _trace(output: str, answer: str, method: str, opened: bool) -> str:
    """The teacher's completion as an SFT target: the `<think>` its prompt opened put back in front."""
    if opened and not output.lstrip().startswith("<think>"):
        output = f"<think>\n{output}"
    return _in_answer_format(output, answer, method)


def run_distill(config: DistillConfig, engine: Engine | None = None) -> dict:
    """Generate what is missing, then rewrite `traces.jsonl` and `stats.json`; returns the stats."""
    validate(config)  # again, for a config built in Python rather than by overrides
    teacher = model_directory(config.teacher, where="--teacher")
    out = Path(config.out)
    evaluation = _as_evaluation(config, teacher)
    benchmark = get_benchmark(config.schema)
    loaded = load_items(evaluation, [benchmark])
    made_by = producers(evaluation, teacher, [benchmark])
    announce_plans(evaluation, out, loaded, made_by, label="distill")
    if config.data_parallel > 1 and engine is None:
        from xr_nemo.eval.replicas import run_replicas

        run_replicas(evaluation, teacher, out)
    else:
        generate(evaluation, teacher, out, loaded, engine, made_by=made_by)
    items, problems = loaded[benchmark.name]
    identity = made_by[benchmark.name].model
    rows = current_rows(evaluation, out, benchmark.name, items, made_by[benchmark.name])
    opened = template_opens_thinking(AutoTokenizer.from_pretrained(teacher))
    traces, solved, correct, total = [], 0, 0, 0
    for item in items:
        row = rows.get(item.id)
        if row is None or "unusable" in row:
            continue
        total += len(row["correct"])
        correct += sum(row["correct"])
        kept = [k for k, right in enumerate(row["correct"]) if right][: config.keep]
        solved += bool(kept)
        for k in kept:
            response = _trace(row["outputs"][k], row["answers"][k], row["methods"][k], opened)
            messages = [
                {"role": "user", "content": training_prompt(item.question, item.options)},
                {"role": "assistant", "content": response},
            ]
            traces.append({"id": item.id, "messages": messages, "teacher": identity})
    write_text_atomically(
        out / "traces.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in traces)
    )
    stats = {
        "teacher": str(teacher),
        "teacher_identity": identity,
        "questions": len(items),
        "generated": len([item for item in items if item.id in rows]),
        "samples": total,
        "correct_samples": correct,
        "acceptance": correct / total if total else 0.0,
        "questions_solved": solved,
        "traces": len(traces),
        "skipped_records": len(problems),
        "problems": [f"{p.where}: {p.what}" for p in problems[:20]],
        "config": asdict(config),
    }
    write_text_atomically(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return stats
