"""Math reward: 1 if the completion's final answer is mathematically equivalent to the gold answer.

Equivalence is math-verify's (numbers, fractions, LaTeX, sets, intervals). math-verify's own time-outs
use `signal.alarm`, which only works in a main thread, and log the whole input when they fire; this
module is therefore meant to run inside the reward workers (`pool.py`), which enforce a hard deadline.
"""

from __future__ import annotations

import logging

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from xr_nemo.rewards.extract import final_answer

logging.getLogger("math_verify").setLevel(logging.CRITICAL)

_EXTRACTION = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _as_latex(answer: str) -> str:
    """math-verify reads LaTeX inside `$…$`; plain expressions are read as they are too."""
    return f"${answer}$"


def _parse(text: str, timeout_s: int) -> list:
    return parse(_as_latex(text), _EXTRACTION, parsing_timeout=timeout_s)


def math_score(completion: str, gold: str, timeout_s: int = 3) -> tuple[float, bool]:
    """(1 or 0, whether math-verify could read the gold). An unreadable gold is compared as a string —
    the caller reports how often, so it never passes silently."""
    parsed_gold = _parse(gold, timeout_s)
    readable = any(not isinstance(value, str) for value in parsed_gold)  # else only the raw text is back
    answer = final_answer(completion)
    if answer is None:
        return 0.0, readable
    parsed_answer = _parse(answer, timeout_s)
    if not parsed_gold or not parsed_answer:
        same = answer.strip() == gold.strip()
    else:
        same = verify(parsed_gold, parsed_answer, timeout_seconds=timeout_s)
    return float(same), readable


def math_reward(completion: str, gold: str) -> float:
    return math_score(completion, gold)[0]
