"""Find the final answer of a finished response.

A response is finished when its thinking is closed: the answer is read only from the text after the
last `</think>` — from `<answer>…</answer>` there, else a `\\boxed{…}`, else "the answer is …", else that
text itself when it is short. A response whose thinking never closed (cut at the length limit, or
thinking forever) has no answer: that is what RL must not reward. The last occurrence wins (models
restate and correct themselves). Inputs are capped before any search, so a megabyte completion costs no
more than a short one.
"""

from __future__ import annotations

import re

MAX_SEARCH_CHARS = 20_000  # the tail of a completion that is searched for an answer
MAX_ANSWER_CHARS = 1_000  # longer "answers" are not answers
MAX_REPLY_CHARS = 200  # a plain reply after the thinking longer than this is prose, not an answer

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


def after_thinking(completion: str) -> str | None:
    """The text after the last `</think>`; None when the thinking never closed."""
    _, closed, rest = completion.rpartition("</think>")
    return rest if closed else None


def located_answer(text: str) -> tuple[str | None, str]:
    """(final answer as written, where it was found: answer_tag | boxed | answer_is | reply | none) in
    the text after the thinking."""
    text = text[-MAX_SEARCH_CHARS:]
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        boxed = _last_boxed(tagged[-1])
        answer, method = (tagged[-1] if boxed is None else boxed), "answer_tag"
    elif (boxed := _last_boxed(text)) is not None:
        answer, method = boxed, "boxed"
    elif stated := _ANSWER_IS.findall(text):
        answer, method = stated[-1], "answer_is"
    else:
        reply = text.strip()
        answer, method = (reply, "reply") if len(reply) <= MAX_REPLY_CHARS else (None, "none")
    if answer is None:
        return None, "none"
    answer = answer.strip().strip("$").strip()
    return (answer, method) if answer and len(answer) <= MAX_ANSWER_CHARS else (None, "none")


def final_answer(completion: str) -> str | None:
    """The final answer of a finished response as written, or None (unfinished, or no answer given)."""
    text = after_thinking(completion)
    return None if text is None else located_answer(text)[0]
