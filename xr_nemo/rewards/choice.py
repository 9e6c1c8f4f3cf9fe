"""Multiple-choice reward: the completion names the gold option by letter ("C", "(C)", "C.", "Option C")
or by the option's text."""

from __future__ import annotations

import re
import string

from xr_nemo.rewards.extract import after_thinking, final_answer

_LETTER = re.compile(r"^\(?\s*(?:option\s+)?([A-Z])\s*\)?(?:[.:)\s]|$)", re.IGNORECASE)


def normalise_option_text(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def chosen_option(answer: str, options: dict[str, str]) -> str | None:
    """The option letter `answer` picks, or None. An exact option text wins over a leading letter, so
    "A fever" picks the option reading "a fever" rather than option A."""
    normalised = normalise_option_text(answer)
    by_text = [letter for letter, text in options.items() if normalise_option_text(text) == normalised]
    if len(by_text) == 1:
        return by_text[0]
    found = _LETTER.match(answer.strip())
    if found and found.group(1).upper() in options:
        return found.group(1).upper()
    return None


def choice_reward(completion: str, gold: str, options: dict[str, str]) -> float:
    """`gold` is the correct option's letter."""
    answer = final_answer(after_thinking(completion))
    if answer is None:
        return 0.0
    return 1.0 if chosen_option(answer, options) == gold.strip().upper() else 0.0
