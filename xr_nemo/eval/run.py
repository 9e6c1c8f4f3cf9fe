"""`xr-nemo eval`: generate, extract, score and report, benchmark by benchmark, resumably.

Predictions are appended to `predictions/<benchmark>.jsonl` after every generation batch (each row: the
raw outputs, the extracted answers, the rule that found each, and whether it is correct), so an
interrupted evaluation continues where it stopped and never regenerates a finished item. Unusable
records (no gold answer, malformed fields) are counted and listed, never fatal mid-run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm
from transformers import AutoTokenizer

from xr_nemo.config.schema import EvalConfig
from xr_nemo.conversion.convert import export_hf
from xr_nemo.data.records import DataError
from xr_nemo.errors import ConfigError
from xr_nemo.eval.benchmarks import Benchmark, EvalItem, get_benchmark
from xr_nemo.eval.extract import Extraction, extract_choice, extract_math
from xr_nemo.eval.prompts import messages
from xr_nemo.eval.scoring import avg_at_k, majority_at_k, pass_at_k, wilson_interval
from xr_nemo.generation.engine import Engine, Sampling, chat_stop_ids, generate_from_seeds
from xr_nemo.io.atomic_dir import write_text_atomically
from xr_nemo.rewards.pool import RewardPool, RewardTask
from xr_nemo.training.checkpoint import latest_checkpoint


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").exists() and any(directory.glob("*.safetensors"))


def model_directory(model: str) -> Path:
    """An HF directory as given, or a run directory's `hf/` export — made from the run's latest
    checkpoint first when the run has none."""
    path = Path(model)
    for candidate in (path, path / "hf"):
        if _has_weights(candidate):
            return candidate
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise ConfigError(
            f"{model} is neither a Hugging Face model directory nor a run directory with checkpoints",
            where="--model",
            fix="pass a directory with config.json and *.safetensors, or a training run directory",
        )
    print(f"[eval] exporting {latest} → {path / 'hf'}", flush=True)
    return export_hf(latest, path / "hf", overwrite=True)


def read_predictions(path: Path) -> dict[str, dict]:
    """Finished rows by item id; a last line cut short by an interruption is ignored."""
    rows = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["id"]] = row
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _load_items(
    benchmark: Benchmark, source: str | None, limit: int | None
) -> tuple[list[EvalItem], list[str]]:
    items, problems = [], []
    for entry in benchmark.items(source):
        if isinstance(entry, DataError):
            problems.append(f"{entry.where}: {entry.what}")
            continue
        items.append(entry)
        if limit is not None and len(items) >= limit:
            break
    return items, problems


def _extract(benchmark: Benchmark, item: EvalItem, output: str) -> Extraction:
    return extract_choice(output, item.options or {}) if benchmark.kind == "choice" else extract_math(output)


def prompt_ids(tokenizer, item: EvalItem) -> list[int]:
    ids = tokenizer.apply_chat_template(messages(item), tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _context_length(config: EvalConfig, model_dir: Path, tokenizer, items: list[EvalItem]) -> int:
    """The longest prompt plus the generation budget, checked against the model's context."""
    from transformers import AutoConfig

    longest = max((len(prompt_ids(tokenizer, item)) for item in items), default=0)
    needed = longest + config.max_new_tokens
    limit = AutoConfig.from_pretrained(model_dir).get_text_config().max_position_embeddings
    if needed > limit:
        raise ConfigError(
            f"the longest prompt ({longest} tokens) plus max_new_tokens ({config.max_new_tokens}) exceeds "
            f"the model's context of {limit} tokens",
            where="max_new_tokens",
            fix=f"set max_new_tokens ≤ {limit - longest}",
        )
    return needed


class Evaluator:
    def __init__(self, config: EvalConfig, engine: Engine, tokenizer, pool: RewardPool) -> None:
        self.config, self.engine, self.tokenizer, self.pool = config, engine, tokenizer, pool
        self.stop_ids = chat_stop_ids(tokenizer)
        self.sampling = Sampling(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            stop_token_ids=self.stop_ids,
            thinking_budget=config.thinking_budget,
            end_thinking_ids=tuple(tokenizer.encode("</think>", add_special_tokens=False)),
        )

    def _correct(self, benchmark: Benchmark, item: EvalItem, answers: list[Extraction]) -> list[bool]:
        if benchmark.kind == "choice":
            return [a.answer == item.gold for a in answers]
        tasks = [
            RewardTask(f"<answer>{a.answer}</answer>", item.gold) for a in answers if a.answer is not None
        ]
        verdicts = iter(score.correct == 1.0 for score in self.pool.score(tasks))
        return [a.answer is not None and next(verdicts) for a in answers]

    def generate_rows(
        self, benchmark: Benchmark, items: list[EvalItem], first_seeds: list[int]
    ) -> list[dict]:
        prompts = [prompt_ids(self.tokenizer, item) for item in items]
        groups = generate_from_seeds(self.engine, prompts, first_seeds, self.config.samples, self.sampling)
        rows = []
        for item, completions in zip(items, groups, strict=True):
            outputs = [
                self.tokenizer.decode([t for t in c.token_ids if t not in self.stop_ids]) for c in completions
            ]
            answers = [_extract(benchmark, item, output) for output in outputs]
            rows.append(
                {
                    "id": item.id,
                    "gold": item.gold,
                    "outputs": outputs,
                    "answers": [a.answer for a in answers],
                    "methods": [a.method for a in answers],
                    "correct": self._correct(benchmark, item, answers),
                    "forced_exit": [c.forced_exit for c in completions],
                    "meta": item.meta,
                }
            )
        return rows


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
        summary[f"majority@{samples}"] = majority_at_k(
            [row["answers"] for row in rows], [row["gold"] for row in rows]
        )
    return summary


def _report(summary: dict, model: str) -> str:
    lines = [
        f"# Evaluation of `{model}`",
        "",
        "| benchmark | accuracy | 95 % interval | n | no answer | skipped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in summary["benchmarks"].items():
        low, high = result["ci95"]
        interval = f"{100 * low:.1f}–{100 * high:.1f} %"
        counts = f"{result['n']} | {result['no_answer']} | {result['skipped']}"
        lines.append(f"| {name} | {100 * result['accuracy']:.1f} % | {interval} | {counts} |")
    return "\n".join(lines) + "\n"


def run_eval(config: EvalConfig, engine: Engine | None = None) -> dict:
    """Evaluate every benchmark in `config.benchmarks`; returns the summary. `engine` defaults to vLLM on
    the model directory (tests pass another)."""
    model_dir = model_directory(config.model)
    out_dir = (
        Path(config.out_dir)
        if config.out_dir
        else model_dir.parent / "eval"
        if model_dir.name == "hf"
        else model_dir / "eval"
    )
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    benchmarks = [get_benchmark(name) for name in config.benchmarks]
    unknown = set(config.data) - set(config.benchmarks)
    if unknown:
        raise ConfigError(f"data given for benchmarks not evaluated: {sorted(unknown)}", where="data")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded = {b.name: _load_items(b, config.data.get(b.name), config.limit) for b in benchmarks}
    if engine is None:
        from xr_nemo.generation.vllm_engine import VLLMEngine

        everything = [item for items, _ in loaded.values() for item in items]
        from xr_nemo.training.setup import params_dtype

        engine = VLLMEngine(
            model_dir,
            max_model_len=_context_length(config, model_dir, tokenizer, everything),
            dtype=params_dtype(config.dtype),
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            load_format="auto",
        )
    summary: dict = {"model": str(model_dir), "config": asdict(config), "benchmarks": {}}
    with RewardPool(workers=2, timeout_s=config.reward_timeout_s) as pool:
        evaluator = Evaluator(config, engine, tokenizer, pool)
        for benchmark in benchmarks:
            items, problems = loaded[benchmark.name]
            path = out_dir / "predictions" / f"{benchmark.name}.jsonl"
            done = read_predictions(path)
            todo = [(index, item) for index, item in enumerate(items) if item.id not in done]
            generated = 0
            bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=benchmark.name, unit="item")
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                seeds = [config.seed + index * config.samples for index, _ in batch]  # a function of the item
                rows = evaluator.generate_rows(benchmark, [item for _, item in batch], seeds)
                _append(path, rows)
                for row in rows:
                    done[row["id"]] = row
                generated += len(rows)
                bar.update(len(rows))
            bar.close()
            rows = [done[item.id] for item in items]
            result = summarise(rows, config.samples)
            result.update(skipped=len(problems), problems=problems[:20], generated=generated)
            summary["benchmarks"][benchmark.name] = result
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomically(out_dir / "report.md", _report(summary, str(model_dir)))
    engine.close()
    return summary
