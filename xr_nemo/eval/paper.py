"""What the X-Reasoner paper reports (accuracy, %), for the report to set our numbers beside.

Sources, in `../docs/eval.md` as well: Table 5 (greedy; Qwen2.5-VL-7B vs X-Reasoner-7B on MMMU,
MMMU-Pro, MathVista, MathVision), Table 4 (baseline vs SFT+RL on MMLU-Pro, MMLU-Pro-Health, NEJM; the
MMMU-Pro row there is a separate run, so Table 5's is used), and Table 8 (the prior state of the art
the paper quotes).
"""

from __future__ import annotations

BASE = "Qwen2.5-VL-7B (paper)"
X_REASONER = "X-Reasoner-7B (paper)"
PRIOR_BEST = "prior SOTA (paper)"
COLUMNS = (BASE, X_REASONER, PRIOR_BEST)

PAPER: dict[str, dict[str, float]] = {
    "mmmu": {BASE: 53.0, X_REASONER: 56.4, PRIOR_BEST: 55.0},
    "mmmu_pro": {BASE: 38.7, X_REASONER: 43.0, PRIOR_BEST: 40.7},
    "mathvista": {BASE: 62.8, X_REASONER: 69.0},
    "mathvision": {BASE: 25.0, X_REASONER: 29.6},
    "mmlu_pro": {BASE: 47.6, X_REASONER: 53.3, PRIOR_BEST: 52.1},
    "mmlu_pro_health": {BASE: 47.8, X_REASONER: 53.1, PRIOR_BEST: 54.3},
    "nejm": {BASE: 41.8, X_REASONER: 45.7},
    "gsm8k": {PRIOR_BEST: 87.2},
    "medqa": {PRIOR_BEST: 71.6},
    "mmmu_health": {PRIOR_BEST: 57.3},
    "medxpertqa_mm": {PRIOR_BEST: 23.8},
}
