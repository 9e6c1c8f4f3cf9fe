"""`report.md` and `accuracy.png`: our accuracies with 95 % intervals and counts, beside the paper's."""

from __future__ import annotations

import os
from pathlib import Path

from xr_nemo.eval.paper import COLUMNS, PAPER, sources


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def report_markdown(summary: dict) -> str:
    source = summary.get("exported_from")
    lines = [
        f"# Evaluation of `{summary['model']}`" + (f", the export of `{source}`" if source else ""),
        "",
        "Accuracy in %, greedy unless `temperature` says otherwise; the paper's numbers are greedy, from "
        "the table or figure named in the last column (see docs/eval.md).",
        "",
        "| benchmark | ours | 95 % interval | n | no answer | skipped | "
        + " | ".join(COLUMNS)
        + " | paper's source |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for name, result in summary["benchmarks"].items():
        low, high = result["ci95"]
        paper = PAPER.get(name, {})
        cells = [
            name,
            f"{100 * result['accuracy']:.1f}",
            f"{100 * low:.1f}–{100 * high:.1f}",
            str(result["n"]),
            str(result["no_answer"]),
            str(result["skipped"]),
            *(_percent(paper.get(column)) for column in COLUMNS),
            sources(name) or "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    guessed = {n: r for n, r in summary["benchmarks"].items() if "official_compatible_accuracy" in r}
    if guessed:
        lines += [
            "",
            "Where the official scorer guesses a random option when it reads no answer, its score beside "
            "ours (the same answers, plus its seeded guess for each unanswered item):",
            "",
            "| benchmark | ours (strict) | official-compatible |",
            "|---|---:|---:|",
        ]
        for name, result in guessed.items():
            strict, official = 100 * result["accuracy"], 100 * result["official_compatible_accuracy"]
            lines.append(f"| {name} | {strict:.1f} | {official:.1f} |")
    sampled = [(name, r) for name, r in summary["benchmarks"].items() if any("@" in key for key in r)]
    if sampled:
        keys = [key for key in sampled[0][1] if "@" in key]
        lines += ["", "| benchmark | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for name, result in sampled:
            lines.append(f"| {name} | " + " | ".join(f"{100 * result[k]:.1f}" for k in keys) + " |")
    skipped = {name: r for name, r in summary["benchmarks"].items() if r["skipped"]}
    if skipped:
        lines += ["", "## Skipped items", ""]
        for name, result in skipped.items():
            reasons = ", ".join(f"{count} {reason}" for reason, count in result["skipped_by_reason"].items())
            lines.append(f"- **{name}**: {reasons}; first: `{result['problems'][0]}`")
    lines += ["", "![accuracy](accuracy.png)"]
    return "\n".join(lines) + "\n"


def interval_error_bars(percents: list[float], intervals: list[tuple[float, float]]) -> list[list[float]]:
    """Matplotlib's `yerr` (distances below and above each bar, in points) from 95 % intervals given as
    fractions; clamped at 0, since a Wilson bound can sit a rounding error past the estimate."""
    below = [max(0.0, y - 100 * low) for y, (low, _) in zip(percents, intervals, strict=True)]
    above = [max(0.0, 100 * high - y) for y, (_, high) in zip(percents, intervals, strict=True)]
    return [below, above]


def save_figure(figure, path: Path, dpi: int = 120) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    figure.tight_layout()
    figure.savefig(tmp, dpi=dpi)
    plt.close(figure)
    os.replace(tmp, path)


def accuracy_chart(summary: dict, path: Path) -> None:
    """Grouped bars per benchmark: ours (with its 95 % interval) and the paper's models where reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["benchmarks"])
    series = [("ours", [100 * summary["benchmarks"][n]["accuracy"] for n in names])]
    series += [(column, [PAPER.get(n, {}).get(column) for n in names]) for column in COLUMNS]
    series = [(label, values) for label, values in series if any(v is not None for v in values)]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    for k, (label, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        errors = None
        if label == "ours":
            errors = interval_error_bars(ys, [summary["benchmarks"][n]["ci95"] for n in names])
        axes.bar(xs, ys, width, label=label, yerr=errors, capsize=3)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=8)
    axes.set_title(Path(summary["model"]).name or summary["model"])
    save_figure(figure, path)
