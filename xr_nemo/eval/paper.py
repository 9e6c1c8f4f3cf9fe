"""What the X-Reasoner paper reports (accuracy, %, greedy), for the report to set our numbers beside, with
where each number is printed in the paper (`SOURCES`; `../docs/eval.md` says more).

Tables first: Table 5 (Qwen2.5-VL-7B vs X-Reasoner-7B on MMMU, MMMU-Pro, MathVista, MathVision), Table 4
(baseline vs SFT+RL on MMLU-Pro, MMLU-Pro-Health, NEJM; its MMMU-Pro row is a separate run, so Table 5's
is used) and Table 8 (the prior state of the art the paper quotes). X-Reasoner-Med's greedy numbers are
printed only on Fig. 1's bars (MedQA 4-op, MMLU-Pro-Health, MMMU-Health, MedXpertQA-MM), which also give
the baseline and X-Reasoner where no table does. Fig. 4 (avg@5, majority@5, pass@5 at temperature 0.3)
is not carried: its bar labels cannot be told apart in any text of the paper we have.
"""

from __future__ import annotations

BASE = "Qwen2.5-VL-7B (paper)"
X_REASONER = "X-Reasoner-7B (paper)"
X_REASONER_MED = "X-Reasoner-Med-7B (paper)"
PRIOR_BEST = "prior SOTA (paper)"
COLUMNS = (BASE, X_REASONER, X_REASONER_MED, PRIOR_BEST)

PAPER: dict[str, dict[str, float]] = {
    "mmmu": {BASE: 53.0, X_REASONER: 56.4, PRIOR_BEST: 55.0},
    "mmmu_pro": {BASE: 38.7, X_REASONER: 43.0, PRIOR_BEST: 40.7},
    "mathvista": {BASE: 62.8, X_REASONER: 69.0},
    "mathvision": {BASE: 25.0, X_REASONER: 29.6},
    "mmlu_pro": {BASE: 47.6, X_REASONER: 53.3, PRIOR_BEST: 52.1},
    "mmlu_pro_health": {BASE: 47.8, X_REASONER: 53.1, X_REASONER_MED: 58.7, PRIOR_BEST: 54.3},
    "nejm": {BASE: 41.8, X_REASONER: 45.7},
    "gsm8k": {BASE: 84.9, X_REASONER: 88.2, PRIOR_BEST: 87.2},
    "medqa": {BASE: 56.3, X_REASONER: 62.3, X_REASONER_MED: 72.4, PRIOR_BEST: 71.6},
    "mmmu_health": {BASE: 56.7, X_REASONER: 60.0, X_REASONER_MED: 64.0, PRIOR_BEST: 57.3},
    "medxpertqa_mm": {BASE: 22.2, X_REASONER: 23.8, X_REASONER_MED: 26.4, PRIOR_BEST: 23.8},
}

_TABLE5 = {BASE: "Table 5", X_REASONER: "Table 5"}
_TABLE4 = {BASE: "Table 4", X_REASONER: "Table 4"}
_FIG1 = {BASE: "Fig. 1", X_REASONER: "Fig. 1", X_REASONER_MED: "Fig. 1"}
_TABLE8 = {PRIOR_BEST: "Table 8"}
SOURCES: dict[str, dict[str, str]] = {
    "mmmu": _TABLE5 | _TABLE8,
    "mmmu_pro": _TABLE5 | _TABLE8,
    "mathvista": _TABLE5,
    "mathvision": _TABLE5,
    "mmlu_pro": _TABLE4 | _TABLE8,
    "mmlu_pro_health": _TABLE4 | {X_REASONER_MED: "Fig. 1"} | _TABLE8,
    "nejm": _TABLE4,
    "gsm8k": {BASE: "Fig. 1", X_REASONER: "Fig. 1"} | _TABLE8,
    "medqa": _FIG1 | _TABLE8,
    "mmmu_health": _FIG1 | _TABLE8,
    "medxpertqa_mm": _FIG1 | _TABLE8,
}


def sources(benchmark: str) -> str:
    """Where the paper prints the numbers of one benchmark, e.g. "Table 5: Qwen2.5-VL-7B, X-Reasoner-7B;
    Table 8: prior SOTA"; "" when it reports none."""
    by_source: dict[str, list[str]] = {}
    for column, source in SOURCES.get(benchmark, {}).items():
        by_source.setdefault(source, []).append(column.removesuffix(" (paper)"))
    return "; ".join(f"{source}: {', '.join(names)}" for source, names in by_source.items())
