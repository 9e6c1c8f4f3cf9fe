"""Answer extraction for evaluation: lenient where the reward is strict, and auditable — every
prediction records which rule found its answer, so a surprising score can be traced to the outputs.

Multiple choice: the final answer (tag, box, "Answer: …") read as a letter or an option's text; failing
that, a reply that is only a letter; failing that, the last option letter written as "(C)" or "C." after
the thinking. A final answer naming several different letters is ambiguous and counts as no answer.
Free-form math: the final answer; failing that, the last number after the thinking.
Short answers (medical VQA: "yes", "left lung", "CT"): the final answer; failing that, a reply after the
thinking that is one short line. They are compared after normalisation (`same_short_answer`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xr_nemo.rewards.choice import chosen_option, normalise_option_text
from xr_nemo.rewards.extract import after_thinking, located_answer

_BARE_LETTER = re.compile(r"^\s*\(?([A-Z])\)?\s*\.?\s*$")
_MARKED_LETTER = re.compile(r"(?:\(([A-Z])\)|\b([A-Z])[.)](?=\s|$))")
_LETTERS = re.compile(r"\b([A-Z])\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # an option letter for multiple choice; the answer text for math
    method: (
        str  # answer_tag | boxed | answer_is | bare_letter | marked_letter | last_number | ambiguous | none
    )


def _names_one_option(answer: str, letter: str, options: dict[str, str]) -> bool:
    """False for "A or C"; True for "C", "(C)", "Warfarin" and "C. Warfarin" (even when the option text
    itself contains a capital letter that is also an option)."""
    if len({m for m in _LETTERS.findall(answer) if m in options}) <= 1:
        return True
    text = normalise_option_text(options[letter])
    return normalise_option_text(answer) in (text, normalise_option_text(f"{letter} {text}"))


def extract_choice(output: str, options: dict[str, str]) -> Extraction:
    tail = after_thinking(output)
    answer, method = located_answer(tail)
    if answer is not None:
        letter = chosen_option(answer, options)
        if letter is not None and _names_one_option(answer, letter, options):
            return Extraction(letter, method)
        if letter is not None or len({m for m in _LETTERS.findall(answer) if m in options}) > 1:
            return Extraction(None, "ambiguous")
    bare = _BARE_LETTER.match(tail)
    if bare and bare.group(1) in options:
        return Extraction(bare.group(1), "bare_letter")
    marked = [a or b for a, b in _MARKED_LETTER.findall(tail) if (a or b) in options]
    if marked:
        return Extraction(marked[-1], "marked_letter")
    return Extraction(None, "none")


def extract_math(output: str) -> Extraction:
    tail = after_thinking(output)
    answer, method = located_answer(tail)
    if answer is not None:
        return Extraction(answer, method)
    numbers = _NUMBER.findall(tail[-2_000:])
    if numbers:
        return Extraction(numbers[-1].replace(",", ""), "last_number")
    return Extraction(None, "none")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")


def extract_short(output: str) -> Extraction:
    tail = after_thinking(output)
    answer, method = located_answer(tail)
    if answer is not None:
        return Extraction(answer, method)
    line = tail.strip()
    if line and "\n" not in line and "<think>" not in line and len(line.split()) <= 8:
        return Extraction(line, "short_reply")
    return Extraction(None, "none")


def normalise_short_answer(text: str) -> str:
    """Lower case, without punctuation, articles or repeated spaces: "The left lung." → "left lung"."""
    text = _ARTICLES.sub(" ", _PUNCTUATION.sub(" ", text.lower()))
    return " ".join(text.split())


def same_short_answer(answer: str, gold: str) -> bool:
    return normalise_short_answer(answer) == normalise_short_answer(gold)
