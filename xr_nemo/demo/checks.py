"""What a skeptic asks of the demo's numbers, as pure functions of the run's files: an exact McNemar
test between two stages on the same items, whether a response's reasoning restates its expression
correctly, and the trivial rules a model could score by without reading the problem at all."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from xr_nemo.demo.toy_world import Problem

CHANCE = 0.1  # a uniform guess among the ten possible answers, 0–9
_RESTATED = re.compile(r"<think>\s*The expression:\s*\n([^\n]*)")


def mcnemar_p(fixed: int, broke: int) -> float:
    """Exact two-sided McNemar test: under no difference between the stages, each of the
    `fixed + broke` discordant items goes either way with probability 1/2 (a binomial test)."""
    n = fixed + broke
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broke) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """Two stages on the same items: those the second got right and the first wrong (fixed), the
    reverse (broke), and McNemar's p-value."""

    fixed: int
    broke: int
    p: float

    @classmethod
    def of(cls, before: dict[str, bool], after: dict[str, bool]) -> Paired:
        if before.keys() != after.keys():
            raise ValueError("paired stages must be scored on the same items")
        fixed = sum(after[key] and not before[key] for key in before)
        broke = sum(before[key] and not after[key] for key in before)
        return cls(fixed, broke, mcnemar_p(fixed, broke))

    def __str__(self) -> str:
        return f"+{self.fixed} / −{self.broke}, p = {self.p:.2g}"


def restated(output: str) -> str | None:
    """The expression a response writes down at the start of its reasoning ("<think>\\nThe
    expression:\\n7+2-2-1\\n…"), or None when it does not begin so."""
    found = _RESTATED.match(output.lstrip())
    return found.group(1).strip() if found else None


# Rules that answer from what a problem's expression looks like, without working it out (ours).
RULES: dict[str, Callable[[str], object]] = {
    "the most common answer": lambda expression: None,
    "the most common answer given the first term": lambda expression: expression[0],
    "the most common answer given the last term": lambda expression: expression[-2:],
    "the most common answer given the first and the last term": lambda expression: (
        expression[0],
        expression[-2:],
    ),
}


@dataclass(frozen=True)
class TrivialRule:
    """One of `RULES` fitted to training problems: the most common answer per key (ties to the
    smaller answer), and the overall most common one for a key training never showed."""

    name: str
    answers: dict[object, str]
    fallback: str

    @classmethod
    def fit(cls, name: str, training: list[str]) -> TrivialRule:
        key = RULES[name]
        counts: dict[object, Counter[str]] = {}
        for expression in training:
            counts.setdefault(key(expression), Counter())[Problem(expression).answer] += 1
        overall = sum(counts.values(), Counter())
        return cls(name, {k: _most_common(c) for k, c in counts.items()}, _most_common(overall))

    def __call__(self, expression: str) -> str:
        return self.answers.get(RULES[self.name](expression), self.fallback)

    def correct(self, expressions: list[str]) -> int:
        return sum(self(expression) == Problem(expression).answer for expression in expressions)


def _most_common(counts: Counter[str]) -> str:
    return max(counts, key=lambda answer: (counts[answer], -int(answer)))


def best_trivial_rule(training: list[str], validation: list[str]) -> TrivialRule:
    """The rule that scores best on the validation problems, fitted to the training problems (on the
    training problems themselves when there is no validation split)."""
    rules = [TrivialRule.fit(name, training) for name in RULES]
    return max(rules, key=lambda rule: rule.correct(validation or training))
