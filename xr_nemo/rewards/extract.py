"""Find the final answer in a completion: `<answer>…</answer>`, `\\boxed{…}`, or "the answer is …".

The last occurrence wins (models restate and correct themselves). Inputs are capped before any search,
so a megabyte completion costs no more than a short one.
"""

from __future__ import annotations

import re

MAX_SEARCH_CHARS = 20_000  # the tail of a completion that is searched for an answer
MAX_ANSWER_CHARS = 1_000  # longer "answers" are not answers

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS = re.compile(r"answer(?:\s+is|:)[:\s]*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_BOXED = ("\\boxed{", "\\fbox{")


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind(marker) for marker in _BOXED)
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for position in range(opening, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[opening + 1 : position]
    return None  # unclosed


def located_answer(completion: str) -> tuple[str | None, str]:
    """(final answer as written, where it was found: answer_tag | boxed | answer_is | none)."""
    text = completion[-MAX_SEARCH_CHARS:]
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        boxed = _last_boxed(tagged[-1])
        answer, method = (tagged[-1] if boxed is None else boxed), "answer_tag"
    else:
        answer, method = _last_boxed(text), "boxed"
        if answer is None:
            stated = _ANSWER_IS.findall(text)
            answer, method = (stated[-1], "answer_is") if stated else (None, "none")
    if answer is None:
        return None, "none"
    answer = answer.strip().strip("$").strip()
    return (answer, method) if answer and len(answer) <= MAX_ANSWER_CHARS else (None, "none")


def final_answer(completion: str) -> str | None:
    """The completion's final answer as written, or None when it gives none."""
    return located_answer(completion)[0]


def after_thinking(completion: str) -> str:
    """The part after the last `</think>` (the whole completion when there is none)."""
    _, closed, rest = completion.rpartition("</think>")
    return rest if closed else completion
