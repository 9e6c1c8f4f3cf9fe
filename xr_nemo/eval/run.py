"""`xr-nemo eval`: generate, extract, score and report, benchmark by benchmark, resumably.

Predictions are appended to `predictions/<benchmark>.jsonl` after every generation batch (each row: the
raw outputs, the extracted answers, the rule that found each, whether it is correct, and the record of
what produced it — `xr_nemo.eval.provenance`), so an interrupted evaluation continues where it stopped
and never regenerates a finished item, while a row that another model, other settings or an edited
item produced is generated again (`xr_nemo.eval.reuse` says how many of each). Unusable records (no
gold answer, malformed fields, missing or undecodable images) are counted by reason and listed, never
fatal mid-run. With `data_parallel=N`, N engine replicas each generate a share of the items in their
own process (`xr_nemo.eval.replicas`); this process then scores and reports.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm
from transformers import AutoTokenizer

from xr_nemo.config.bounds import validate
from xr_nemo.config.schema import EvalConfig
from xr_nemo.data.records import DataError
from xr_nemo.eval.engines import Engines
from xr_nemo.eval.predictions import append_predictions, predictions_path
from xr_nemo.eval.provenance import RECORD, Producer
from xr_nemo.eval.report import accuracy_chart, report_markdown
from xr_nemo.eval.reuse import announce_plans, current_rows, first_seeds, plan_benchmark, producers
from xr_nemo.eval.scoring import avg_at_k, majority_at_k, pass_at_k, wilson_interval
from xr_nemo.generation.engine import Engine, Sampling, generate_from_seeds
from xr_nemo.io.atomic_dir import write_text_atomically
from xr_nemo.rewards.pool import RewardPool, RewardTask
from xr_nemo.run_dir import export_source, resolve_hf_model
from xr_nemo.tasks.benchmark import MATH_VERIFIED, UnreadableGold
from xr_nemo.tasks.benchmarks import Benchmark, EvalItem, get_benchmark
from xr_nemo.tasks.extract import Extraction, extract_answer, extract_choice, template_opens_thinking
from xr_nemo.tasks.image_benchmarks import mathvision_same
from xr_nemo.tasks.images import MissingImage, UndecodableImage, UnusableImage
from xr_nemo.tasks.judges import (
    mathvista_free_form_correct,
    mmmu_open_correct,
    nearest_by_edit_distance,
    nearest_by_similarity,
    normalise_short_answer,
    official_guesses,
    same_short_answer,
)
from xr_nemo.tasks.prompts import PromptBuilder

Loaded = dict[str, tuple[list[EvalItem], list[DataError]]]


def model_directory(model: str, where: str = "--model") -> Path:
    """An HF directory, or a run directory's (or a checkpoint's) export, made first when missing."""
    return resolve_hf_model(model, where, say=lambda message: print(f"[eval] {message}", flush=True))


def output_directory(config: EvalConfig, model_dir: Path) -> Path:
    if config.out_dir:
        return Path(config.out_dir)
    return model_dir.parent / "eval" if model_dir.name == "hf" else model_dir / "eval"


def load_items(config: EvalConfig, benchmarks: list[Benchmark]) -> Loaded:
    """Each benchmark's usable items (the first `limit`) and the errors of the records it skipped. An item
    whose id an earlier one has is skipped (one id, one prediction); a benchmark with no usable item at
    all is an error, not a 0 % of nothing."""
    loaded: Loaded = {}
    for benchmark in benchmarks:
        items, problems, first_seen = [], [], {}
        source = config.data.get(benchmark.name)
        for entry in benchmark.items(source):
            if isinstance(entry, DataError):
                problems.append(entry)
                continue
            if entry.id in first_seen:
                message = f"item id {entry.id!r} already used at {first_seen[entry.id]}"
                problems.append(DataError(message, where=entry.where))
                continue
            first_seen[entry.id] = entry.where
            items.append(entry)
            if config.limit is not None and len(items) >= config.limit:
                break
        if not items:
            shown = "".join(f"; {p.where}: {p.what}" for p in problems[:3])
            raise DataError(
                f"{benchmark.name} has no usable items ({len(problems)} records skipped{shown})",
                where=source or benchmark.name,
                fix="check the file (and the benchmark's expected fields in docs/eval.md)",
            )
        loaded[benchmark.name] = (items, problems)
    return loaded


_NEAREST = {"edit_distance": nearest_by_edit_distance, "similarity": nearest_by_similarity}


def _extract(benchmark: Benchmark, item: EvalItem, output: str, thinking_opened: bool) -> Extraction:
    """The item's answer: an option letter for multiple choice — for benchmarks whose official scorer
    takes the nearest option when no letter is read (MathVista, OmniMedVQA), that option — else the
    final answer as written. `thinking_opened`: the prompt opened the thinking (an R1-style template),
    so an output without `</think>` is unfinished, never read whole."""
    if item.options is None:
        return extract_answer(output, thinking_opened=thinking_opened)
    found = extract_choice(output, item.options, thinking_opened=thinking_opened)
    if found.answer is not None or benchmark.nearest_option is None:
        return found
    # read again only where a nearest option is taken
    written = extract_answer(output, thinking_opened=thinking_opened).answer
    letter = None if written is None else _NEAREST[benchmark.nearest_option](written, item.options)
    return Extraction(letter, "nearest_option") if letter is not None else found


class Evaluator:
    def __init__(self, config: EvalConfig, builder: PromptBuilder, pool: RewardPool) -> None:
        self.config, self.builder, self.pool = config, builder, pool
        self.decode = builder.tokenizer.decode
        self.sampling = Sampling.of(config.generation, builder.tokenizer)
        self.stop_ids = self.sampling.stop_token_ids
        self.thinking_opened = template_opens_thinking(builder.tokenizer)

    def _correct(self, benchmark: Benchmark, item: EvalItem, answers: list[Extraction]) -> list[bool]:
        """Each answer judged as the benchmark's official scorer judges a final answer."""
        golds = item.meta.get("golds") or [item.gold]
        said = [a.answer for a in answers]
        if item.options is not None:
            return [answer is not None and answer in golds for answer in said]
        if benchmark.free_form == "exact":
            return [a is not None and a.strip() in golds for a in said]
        if benchmark.free_form == "short":
            return [a is not None and any(same_short_answer(a, g) for g in golds) for a in said]
        if benchmark.free_form == "mmmu":
            return [a is not None and mmmu_open_correct(a, golds) for a in said]
        if benchmark.free_form == "mathvista":
            kind, precision = item.meta.get("answer_type", ""), item.meta.get("precision")
            return [
                a is not None and mathvista_free_form_correct(a, item.gold, kind, precision) for a in said
            ]
        verified = self._equivalent_to([item.gold], said)[0]
        if benchmark.free_form == "mathvision":
            same = [a is not None and mathvision_same(a, item.gold) for a in said]
            return [text_or_value or math is True for text_or_value, math in zip(same, verified, strict=True)]
        return [math is True for math in verified]

    def _equivalent_to(self, references: list[str], answers: list[str | None]) -> list[list[bool | None]]:
        """math-verify equivalence of every answer to every reference, in the reward workers; None for a
        missing answer."""
        pairs = [(r, a) for r in references for a in answers if a is not None]
        verdicts = iter(
            s.correct == 1.0
            for s in self.pool.score([RewardTask(f"</think><answer>{a}</answer>", r) for r, a in pairs])
        )
        return [[None if a is None else next(verdicts) for a in answers] for _ in references]

    def _votes(self, benchmark: Benchmark, item: EvalItem, answers: list[str | None]) -> list[int | None]:
        """For majority@k: each sample's vote, the index of the first sample whose answer is the same
        answer — the same letter, the same normalised short answer, or a math-verify equivalent."""
        if item.options is not None or benchmark.free_form not in MATH_VERIFIED:
            key = normalise_short_answer if benchmark.free_form == "short" and item.options is None else str
            keys = [None if a is None else key(a) for a in answers]
            return [None if k is None else keys.index(k) for k in keys]
        distinct = list(dict.fromkeys(a for a in answers if a is not None))
        same = self._equivalent_to(distinct, distinct) if len(distinct) > 1 else [[True]]
        pooled = {
            answer: next(r for j, r in enumerate(distinct) if r == answer or same[j][i])
            for i, answer in enumerate(distinct)
        }
        return [None if a is None else answers.index(pooled[a]) for a in answers]

    def generate_rows(
        self, engine: Engine, benchmark: Benchmark, items: list[EvalItem], first_seeds: list[int]
    ) -> list[dict]:
        """One row per item. An item whose prompt cannot be built (an image the model's processor
        refuses, or one deleted since the items were read) gets an `unusable` row with the reason, so the
        run goes on, the summary counts it, and a rerun skips it the same way."""
        prompts, kept, seeds, rows = [], [], [], []
        for item, seed in zip(items, first_seeds, strict=True):
            try:
                prompts.append(self.builder(item))
            except DataError as error:
                print(f"[eval] {benchmark.name}: unusable {item.id}: {error.render()}", file=sys.stderr)
                rows.append(
                    {"id": item.id, "unusable": _reason(error), "problem": f"{error.where}: {error.what}"}
                )
                continue
            kept.append(item)
            seeds.append(seed)
        groups = (
            generate_from_seeds(engine, prompts, seeds, self.config.samples, self.sampling) if kept else []
        )
        for item, completions in zip(kept, groups, strict=True):
            outputs = [self.decode([t for t in c.token_ids if t not in self.stop_ids]) for c in completions]
            answers = [_extract(benchmark, item, output, self.thinking_opened) for output in outputs]
            rows.append(
                {
                    "id": item.id,
                    "gold": item.gold,
                    "outputs": outputs,
                    "answers": [a.answer for a in answers],
                    "methods": [a.method for a in answers],
                    "correct": self._correct(benchmark, item, answers),
                    "votes": self._votes(benchmark, item, [a.answer for a in answers]),
                    "forced_exit": [c.forced_exit for c in completions],
                    "meta": item.meta,
                }
            )
        return rows


def generate(
    config: EvalConfig,
    model_dir: Path,
    out_dir: Path,
    loaded: Loaded,
    engine: Engine | None = None,
    replica: tuple[int, int] = (0, 1),
    made_by: dict[str, Producer] | None = None,
) -> None:
    """Generate every prediction of this replica's share (item i goes to replica i mod N) that is
    missing or was produced by another model, other settings or another version of its item."""
    rank, replicas = replica
    benchmarks = [get_benchmark(name) for name in loaded]
    made_by = made_by or producers(config, model_dir, benchmarks)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_inputs = None
    if any(b.modality == "image" for b in benchmarks):
        from xr_nemo.models.registry import family_for_dir

        image_inputs = family_for_dir(model_dir).image_inputs(model_dir)
    builder = PromptBuilder(tokenizer, image_inputs, template=config.template)
    engines = Engines(config, model_dir, builder, loaded, given=engine)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    with RewardPool(workers=2, timeout_s=config.reward_timeout_s) as pool:
        evaluator = Evaluator(config, builder, pool)
        for benchmark in benchmarks:
            items = loaded[benchmark.name][0]
            plan = plan_benchmark(config, out_dir, benchmark.name, items, made_by[benchmark.name])
            seeds = first_seeds(config, len(items))
            share = len(range(rank, len(items), replicas))
            todo = [index for index in plan.todo if index % replicas == rank]
            path = predictions_path(out_dir, benchmark.name, rank if replicas > 1 else None)
            label = benchmark.name if replicas == 1 else f"{benchmark.name} [replica {rank}]"
            bar = tqdm(total=share, initial=share - len(todo), desc=label, unit="item", position=rank)
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                rows = evaluator.generate_rows(
                    engines.get(benchmark), benchmark, [items[i] for i in batch], [seeds[i] for i in batch]
                )
                for row in rows:
                    row[RECORD] = plan.records[row["id"]]
                append_predictions(path, rows)
                bar.update(len(batch))
            bar.close()
    engines.close()


_REASONS = {
    UnreadableGold: "unreadable math gold",
    MissingImage: "missing image",
    UndecodableImage: "undecodable image",
    UnusableImage: "unusable image",
}


def _reason(problem: DataError) -> str:
    return _REASONS.get(type(problem), "malformed record")


def summarise(rows: list[dict], samples: int) -> dict:
    first = [row["correct"][0] for row in rows]
    low, high = wilson_interval(sum(first), len(first))
    summary = {
        "n": len(rows),
        "correct": sum(first),
        "accuracy": sum(first) / len(first) if first else 0.0,
        "ci95": [low, high],
        "no_answer": sum(row["answers"][0] is None for row in rows),
        "forced_exit": sum(row["forced_exit"][0] for row in rows),
    }
    if samples > 1 and rows:
        correct = [row["correct"] for row in rows]
        summary[f"avg@{samples}"] = avg_at_k(correct)
        summary[f"pass@{samples}"] = pass_at_k(correct)
        votes = [
            row.get("votes") or [None if a is None else row["answers"].index(a) for a in row["answers"]]
            for row in rows
        ]
        summary[f"majority@{samples}"] = majority_at_k(votes, correct)
    return summary


def _with_official_guesses(items: list[EvalItem], done: dict[str, dict], seed: int) -> float:
    """The accuracy an official scorer that guesses a random option when it reads none would report:
    our strict reading, plus its seeded guess (in item order) for every unanswered item."""
    answered = [
        (item, done[item.id]) for item in items if item.id in done and "unusable" not in done[item.id]
    ]
    unanswered = [item for item, row in answered if row["answers"][0] is None and item.options]
    guesses = dict(
        zip(
            [i.id for i in unanswered],
            official_guesses([list(i.options) for i in unanswered], seed),
            strict=True,
        )
    )
    hits = 0
    for item, row in answered:
        golds = item.meta.get("golds") or [item.gold]
        hits += row["correct"][0] or guesses.get(item.id) in golds
    return hits / len(answered)


def _benchmark_summary(
    config: EvalConfig, out_dir: Path, name: str, loaded: Loaded, producer: Producer
) -> dict:
    items, problems = loaded[name]
    done = current_rows(config, out_dir, name, items, producer)
    unusable = [done[item.id] for item in items if "unusable" in done.get(item.id, {})]
    rows = [done[item.id] for item in items if item.id in done and "unusable" not in done[item.id]]
    reasons = Counter(_reason(problem) for problem in problems) + Counter(row["unusable"] for row in unusable)
    messages = [f"{problem.where}: {problem.what}" for problem in problems] + [r["problem"] for r in unusable]
    missing = [item for item in items if item.id not in done]
    if missing:
        reasons["not generated"] = len(missing)
        messages += [f"{item.where}: {item.id} was not generated (see the warnings)" for item in missing]
    result = summarise(rows, config.samples)
    result.update(skipped=sum(reasons.values()), skipped_by_reason=dict(reasons), problems=messages[:20])
    seed = get_benchmark(name).official_guess_seed
    if seed is not None and rows:
        result["official_compatible_accuracy"] = _with_official_guesses(items, done, seed)
    return result


def run_eval(config: EvalConfig, engine: Engine | None = None) -> dict:
    """Evaluate every benchmark in `config.benchmarks`; returns the summary. `engine` replaces the
    engines chosen by `config.generation.engine` (tests pass a scripted one)."""
    validate(config)  # again, for a config built in Python rather than by overrides
    benchmarks = [get_benchmark(name) for name in config.benchmarks]  # before a run's export is made
    model_dir = model_directory(config.model)
    out_dir = output_directory(config, model_dir)
    loaded = load_items(config, benchmarks)
    made_by = producers(config, model_dir, benchmarks)
    plans = announce_plans(config, out_dir, loaded, made_by)
    if config.data_parallel > 1 and engine is None:
        from xr_nemo.eval.replicas import run_replicas

        run_replicas(config, model_dir, out_dir)
    else:
        generate(config, model_dir, out_dir, loaded, engine, made_by=made_by)
    source = export_source(model_dir)
    summary: dict = {
        "model": str(model_dir),
        "exported_from": None if source is None else str(source),
        "model_identity": next((producer.model for producer in made_by.values()), None),
        "config": asdict(config),
        "benchmarks": {},
    }
    for benchmark in benchmarks:
        producer, plan = made_by[benchmark.name], plans[benchmark.name]
        result = _benchmark_summary(config, out_dir, benchmark.name, loaded, producer)
        result["reused"] = len(plan.reused)
        result["generated"] = len(plan.todo) - result["skipped_by_reason"].get("not generated", 0)
        result["generated_by_reason"] = dict(plan.reasons)
        result["damaged_lines"] = plan.damaged[:20]
        result["generation"] = producer.settings
        summary["benchmarks"][benchmark.name] = result
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    accuracy_chart(summary, out_dir / "accuracy.png")
    write_text_atomically(out_dir / "report.md", report_markdown(summary))
    return summary
