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


def majority_vote(votes: Sequence[int | None]) -> int | None:
    """The sample whose answer most samples share (`votes[i]`: the index of the first sample with an
    equivalent answer; None: no answer), ties to the answer seen first; None when no sample answered."""
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(v for v in votes if v is not None and counts[v] == top)


def majority_at_k(votes: Sequence[Sequence[int | None]], correct: Sequence[Sequence[bool]]) -> float:
    """Fraction of items whose majority answer — answers pooled by equivalence, not by spelling, so
    "0.5" and "\\frac{1}{2}" vote together — is judged correct by the benchmark's judge."""
    hits = 0
    for item_votes, item_correct in zip(votes, correct, strict=True):
        winner = majority_vote(item_votes)
        hits += winner is not None and item_correct[winner]
    return hits / len(votes)
