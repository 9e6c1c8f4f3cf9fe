"""Math reward: 1 if the completion's final answer is mathematically equivalent to the gold answer.

Equivalence is math-verify's (numbers, fractions, LaTeX, sets, intervals). math-verify's own time-outs
use `signal.alarm`, which only works in a main thread, and log the whole input when they fire; this
module is therefore meant to run inside the reward workers (`pool.py`), which enforce a hard deadline.
"""

from __future__ import annotations

import logging

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from xr_nemo.rewards.extract import after_thinking, final_answer

logging.getLogger("math_verify").setLevel(logging.CRITICAL)

_EXTRACTION = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _as_latex(answer: str) -> str:
    """math-verify reads LaTeX inside `$…$`; plain expressions are read as they are too."""
    return f"${answer}$"


def equivalent(answer: str, gold: str, timeout_s: int = 3) -> bool:
    parsed_gold = parse(_as_latex(gold), _EXTRACTION, parsing_timeout=timeout_s)
    parsed_answer = parse(_as_latex(answer), _EXTRACTION, parsing_timeout=timeout_s)
    if not parsed_gold or not parsed_answer:
        return answer.strip() == gold.strip()
    return verify(parsed_gold, parsed_answer, timeout_seconds=timeout_s)


def math_reward(completion: str, gold: str) -> float:
    answer = final_answer(after_thinking(completion))
    if answer is None:
        return 0.0
    return 1.0 if equivalent(answer, gold) else 0.0
