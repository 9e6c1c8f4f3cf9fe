"""Find the final answer in a response.

Where to look. A reward reads only a finished response — its thinking closed — and only the text after
the last `</think>` (`after_thinking`): a response whose thinking never closed (cut at the length
limit, or thinking forever) has no answer, and neither has one that never thought — `docs/grpo.md` says
why RL wants that. Evaluation reads more (`xr_nemo.tasks.extract`).

What to read, in that text: `<answer>…</answer>`, else `\\boxed{…}`, else a GSM8K `#### 18` line, else
"the answer is …" / "Answer: …", else the text itself when it is short. Inside an answer tag a box, a
`####` line or a stated answer is looked for first, the tag's content taken whole otherwise; an
`<answer>` cut before its `</answer>` (a forced exit's answer budget ran out) gives the complete box,
line or statement inside it, else what came before it is read. The last occurrence wins (models
restate and correct themselves). Inputs are cut to their tail before any search, so a megabyte
completion costs no more than a short one; the length cap applies to the answer found, never to the tag
it was found in.
"""

from __future__ import annotations

import re

MAX_SEARCH_CHARS = 20_000  # the tail of a completion that is searched for an answer
MAX_ANSWER_CHARS = 1_000  # longer "answers" are not answers
MAX_REPLY_CHARS = 200  # a plain reply longer than this is prose, not an answer

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"
_STATED = r"answer(?:\s+is|:)[:\s]*(.+?)"
_ANSWER_IS = re.compile(_STATED + r"(?:\.\s|\.$|\n|$)", re.IGNORECASE)
# GSM8K's final-answer line, "#### 18", the number alone on it (a Markdown heading "#### 1. Setup" is not)
_HASH_LINE = r"^####[ \t]*\$?(-?\d[\d,]*(?:\.\d+)?)\.?[ \t]*"
_HASHES = re.compile(_HASH_LINE + "$", re.MULTILINE)
_WRITTEN = (_HASHES, _ANSWER_IS)
# In a cut tag an answer counts only once it has ended: "the answer is 1" may have been cut from "18".
_ENDED = (re.compile(_HASH_LINE + r"\n", re.MULTILINE), re.compile(_STATED + r"(?:\.\s|\n)", re.IGNORECASE))
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\{")


def _brace_pairs(text: str, start: int) -> dict[int, int]:
    """Each `{` from `start` on that closes, with the position of its `}`: one pass, however many boxes."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for position in range(start, len(text)):
        if text[position] == "{":
            stack.append(position)
        elif text[position] == "}" and stack:
            pairs[stack.pop()] = position
    return pairs


def _last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{…}`; a box cut before its closing brace is passed over."""
    openings = [match.end() - 1 for match in _BOX_OPENING.finditer(text)]
    if not openings:
        return None
    pairs = _brace_pairs(text, openings[0])
    closed = [opening for opening in openings if opening in pairs]
    return text[closed[-1] + 1 : pairs[closed[-1]]] if closed else None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def _stated(text: str, *, ended: bool = False) -> str | None:
    """A box, a `####` line or "the answer is …" in an answer tag's content, in that order; `ended`: only
    a line or statement that has ended (the tag was cut)."""
    if (boxed := _last_boxed(text)) is not None:
        return boxed
    for pattern in _ENDED if ended else _WRITTEN:
        if (found := _last(pattern, text)) is not None:
            return found
    return None


def _last_tagged(text: str) -> str | None:
    """The content of the last `<answer>…</answer>` (found from the end: linear in the text)."""
    closing = text.rfind(CLOSE_TAG)
    opening = text.rfind(OPEN_TAG, 0, max(closing, 0))
    return text[opening + len(OPEN_TAG) : closing] if opening >= 0 else None


def _found(text: str) -> tuple[str | None, str]:
    """(answer as written, rule) in text holding no cut answer tag."""
    if (tagged := _last_tagged(text)) is not None:
        return (found if (found := _stated(tagged)) is not None else tagged), "answer_tag"
    for rule, found in (
        ("boxed", _last_boxed(text)),
        ("hashes", _last(_HASHES, text)),
        ("answer_is", _last(_ANSWER_IS, text)),
    ):
        if found is not None:
            return found, rule
    reply = text.strip()
    return (reply, "reply") if len(reply) <= MAX_REPLY_CHARS else (None, "none")


def _cleaned(answer: str | None, rule: str) -> tuple[str | None, str]:
    answer = None if answer is None else answer.strip().strip("$").strip()
    return (answer, rule) if answer and len(answer) <= MAX_ANSWER_CHARS else (None, "none")


def located_answer(text: str) -> tuple[str | None, str]:
    """(final answer as written, the rule that found it: answer_tag | answer_tag_cut | boxed | hashes |
    answer_is | reply | none) in the text to read."""
    text = text[-MAX_SEARCH_CHARS:]
    opened = text.rfind(OPEN_TAG)
    if opened > text.rfind(CLOSE_TAG):  # the last answer tag never closed
        inside = _stated(text[opened + len(OPEN_TAG) :], ended=True)
        if inside is not None:
            return _cleaned(inside, "answer_tag_cut")
        text = text[:opened]
    return _cleaned(*_found(text))


def after_thinking(completion: str) -> str | None:
    """The text after the last `</think>`; None when the thinking never closed."""
    _, closed, rest = completion.rpartition("</think>")
    return rest if closed else None


def final_answer(completion: str) -> str | None:
    """The reward's reading: the final answer after a closed thinking, as written, or None."""
    text = after_thinking(completion)
    return None if text is None else located_answer(text)[0]
