"""Accuracy with its 95 % interval, and the paper's sampled metrics over k samples per item."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Z_95 = 1.959963984540054


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion: stays inside [0, 1] and behaves at 0 % and 100 %."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over items of the fraction of an item's k samples that are correct."""
    return sum(sum(c) / len(c) for c in correct) / len(correct)


def pass_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Fraction of items with at least one correct sample among their k."""
    return sum(any(c) for c in correct) / len(correct)


def majority_at_k(answers: Sequence[Sequence[str | None]], gold: Sequence[str]) -> float:
    """Fraction of items whose most frequent extracted answer (ties: the one seen first; no-answers
    ignored) is the gold one."""
    hits = 0
    for item_answers, item_gold in zip(answers, gold, strict=True):
        votes = Counter(a for a in item_answers if a is not None)
        if votes:
            top = max(votes.values())
            winner = next(a for a in item_answers if a is not None and votes[a] == top)
            hits += winner == item_gold
    return hits / len(gold)
