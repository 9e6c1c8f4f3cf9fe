"""Multiple choice: which option a response chose, for the reward and for evaluation alike.

The final answer (see `extract.py`) is read as an option when it is written as one: `B`, `(B)`, `[B]`,
`**B**`, `B: text`, `B. text`, `(B) text`, `\\boxed{B}`, `\\boxed{\\text{B}}`, "The answer is B", "The
correct option is B", "Option B" — capital letters only, so "a decreased cardiac output" is not option A
and "I think it is B" is not option I — or by an option's text, compared after normalising case, spaces,
units and symbols ("6 cm" is "6cm", "145" is "145°", "Warfarin therapy" names the option "Warfarin"
when no other option's text is in it). Failing both, a letter marked as an option in the text read
(`(C)`, `C.`) is taken, when only one is marked. Nothing is read from inside a thinking: the reward
reads after a closed one (`read_choice`), evaluation as `xr_nemo.tasks.extract` says (`choice_in`).
"""

from __future__ import annotations

import re
import unicodedata

from xr_nemo.rewards.extract import after_thinking, located_answer

_WRAPPERS = (
    re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL),
    re.compile(r"^\\text(?:bf)?\{(.*)\}$", re.DOTALL),
    re.compile(r"^\*\*(.*)\*\*$", re.DOTALL),
    re.compile(r"^\*(.*)\*$", re.DOTALL),
    re.compile(r"^`(.*)`$", re.DOTALL),
    re.compile(r"^\$(.*)\$$", re.DOTALL),
)
_PHRASE = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?(?:answer|option|choice)"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:：]?\s*",
    re.IGNORECASE,
)
_LETTER_FORMS = (
    re.compile(r"^\(([A-Z])\)(?:\s*[:.]?\s*(.*))?$", re.DOTALL),  # (B), (B) text
    re.compile(r"^\[([A-Z])\](?:\s*[:.]?\s*(.*))?$", re.DOTALL),  # [B], [B] text
    re.compile(r"^([A-Z])(?:\s*[:.)]\s*(.*))?$", re.DOTALL),  # B, B: text, B. text, B) text
)
_MARKED = re.compile(r"(?:\(([A-Z])\)|(?<![\w(])([A-Z])[.)](?=\s|$))")
_UNIT_GAP = re.compile(r"(\d)\s+(?=[^\W\d_])")  # "6 cm" → "6cm"
_SYMBOLS = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")  # punctuation and symbols; keeps 2.5


def _unwrapped(answer: str) -> str:
    """Without markup, phrases and trailing punctuation around the answer itself."""
    text = answer.strip()
    while True:
        text = before = text.strip().strip("*_`").strip()
        for wrapper in _WRAPPERS:
            if match := wrapper.match(text):
                text = match.group(1).strip()
        text = _PHRASE.sub("", text, count=1).strip().rstrip(".").strip()
        if text == before:
            return text


def normalise_option_text(text: str) -> str:
    """Lower case, units joined to their numbers, symbols and punctuation dropped, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _UNIT_GAP.sub(r"\1", text)
    text = _SYMBOLS.sub(" ", text)
    return " ".join(text.split())


def _by_text(answer: str, options: dict[str, str]) -> str | None:
    said = normalise_option_text(answer)
    texts = {letter: normalise_option_text(text) for letter, text in options.items()}
    exact = [letter for letter, text in texts.items() if text and text == said]
    if len(exact) == 1:
        return exact[0]
    padded = f" {said} "
    named = [letter for letter, text in texts.items() if text and f" {text} " in padded]
    longest = [letter for letter in named if not any(texts[letter] in texts[o] for o in named if o != letter)]
    return longest[0] if len(longest) == 1 else None


def chosen_option(answer: str, options: dict[str, str]) -> str | None:
    """The option letter a final answer names, or None."""
    text = _unwrapped(answer)
    for form in _LETTER_FORMS:
        if (match := form.match(text)) and match.group(1) in options:
            return match.group(1)
    return _by_text(text, options)


def choice_in(text: str, options: dict[str, str]) -> tuple[str | None, str]:
    """(chosen letter or None, how it was found: answer_tag | answer_tag_cut | boxed | hashes | answer_is |
    reply | marked_letter | none) in the text to read."""
    answer, method = located_answer(text)
    if answer is not None and (letter := chosen_option(answer, options)) is not None:
        return letter, method
    marked = {a or b for a, b in _MARKED.findall(text[-2_000:]) if (a or b) in options}
    return (marked.pop(), "marked_letter") if len(marked) == 1 else (None, "none")


def read_choice(completion: str, options: dict[str, str]) -> tuple[str | None, str]:
    """The reward's reading: the choice after a closed thinking; (None, "unfinished") without one."""
    text = after_thinking(completion)
    return (None, "unfinished") if text is None else choice_in(text, options)


def choice_reward(completion: str, gold: str, options: dict[str, str]) -> float:
    """`gold` is the correct option's letter."""
    return 1.0 if read_choice(completion, options)[0] == gold.strip().upper() else 0.0
