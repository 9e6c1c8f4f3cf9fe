"""Answer extraction for evaluation, the same reading as the rewards' (`xr_nemo.rewards`): only a finished
response (thinking closed) has an answer, read after the thinking. Every prediction records which rule
found its answer (answer_tag, boxed, answer_is, reply, marked_letter; none or unfinished when there is
none), so a surprising score can be traced to the outputs.

Multiple choice: `xr_nemo.rewards.choice.read_choice`. Free-form math and short answers: the final
answer as written, then judged by the benchmark's rule (`xr_nemo.tasks.judges`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xr_nemo.rewards.choice import read_choice
from xr_nemo.rewards.extract import after_thinking, located_answer


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # an option letter for multiple choice; the answer text otherwise
    method: str  # answer_tag | boxed | answer_is | reply | marked_letter | none | unfinished


def extract_choice(output: str, options: dict[str, str]) -> Extraction:
    return Extraction(*read_choice(output, options))


def extract_answer(output: str) -> Extraction:
    """The final answer of a free-form (math or short-answer) response."""
    text = after_thinking(output)
    return Extraction(None, "unfinished") if text is None else Extraction(*located_answer(text))
