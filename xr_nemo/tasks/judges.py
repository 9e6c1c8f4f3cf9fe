"""Benchmark-specific judging of a final answer, following each benchmark's official scorer where that
scorer is defined on the final answer (read from the scorers themselves; `docs/eval.md` lists which we
follow and where we differ). Every function here takes the final answer our extraction read
(`xr_nemo.tasks.extract`: after a closed thinking, or in a response that never opened one) — never a
pattern found anywhere in the response, which is where we deliberately differ from scorers that search
the whole output.
"""

from __future__ import annotations

import difflib
import random
import re
import string

_NUMBER = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_COMMA_NUMBER = re.compile(r"-?\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b")


# ── nearest option (MathVista: edit distance; OmniMedVQA: difflib's ratio) ──────────────────────────


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def nearest_by_edit_distance(answer: str, options: dict[str, str]) -> str:
    """MathVista's fallback for an answer that is no option letter: the option text at the smallest
    Levenshtein distance (case-sensitive; the first on a tie)."""
    return min(options, key=lambda letter: _edit_distance(answer, options[letter]))


def nearest_by_similarity(answer: str, options: dict[str, str]) -> str | None:
    """OmniMedVQA's scorer: the option text with the highest difflib ratio to the answer (the first on a
    tie); None when every ratio is 0."""
    ratios = {letter: difflib.SequenceMatcher(None, text, answer).ratio() for letter, text in options.items()}
    best = max(ratios, key=ratios.__getitem__)
    return best if ratios[best] > 0 else None


# ── MMMU open questions ─────────────────────────────────────────────────────────────────────────────


def _mmmu_normalised(text: str) -> list[str | float]:
    """MMMU's normalisation: a number becomes itself rounded to 2 decimals; other text is lower-cased,
    and a single character is padded (" x", "x ") so that it only matches as a word."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def _numbers(text: str) -> list[str]:
    with_commas = _COMMA_NUMBER.findall(text)
    rest = _COMMA_NUMBER.sub(" ", text)
    return with_commas + _NUMBER.findall(rest)


def mmmu_open_correct(answer: str, golds: list[str]) -> bool:
    """MMMU's `eval_open` on our final answer: correct when a gold string is contained in the answer
    (case-insensitive), or a number in the answer equals a gold number at 2 decimals. Every gold of a
    list-valued answer is accepted."""
    gold_values = [value for gold in golds for value in _mmmu_normalised(str(gold))]
    said = [value for piece in [answer, *_numbers(answer)] for value in _mmmu_normalised(piece)]
    for value in said:
        if isinstance(value, str) and any(isinstance(g, str) and g in value for g in gold_values):
            return True
        if isinstance(value, float) and any(isinstance(g, float) and g == value for g in gold_values):
            return True
    return False


# ── MathVista free-form answers ─────────────────────────────────────────────────────────────────────


def _first_number(text: str) -> float | None:
    found = _NUMBER.search(text.replace(",", ""))
    return float(found.group()) if found else None


def mathvista_free_form_correct(answer: str, gold: str, answer_type: str, precision: int | None) -> bool:
    """MathVista's `normalize_extracted_answer` + `safe_equal`: an integer answer is truncated
    (`int(float(x))`), a float rounded to the item's `precision`, a list compared as written; the gold is
    compared as a string. Ours: the number is the first one written in the final answer (the official
    scorer has GPT-4 extract it)."""
    if answer_type == "list":
        return answer.strip().replace(" ", "") == gold.strip().replace(" ", "")
    value = _first_number(answer)
    if value is None:
        return False
    if answer_type == "integer":
        return str(int(value)) == gold.strip()
    if answer_type == "float":
        return str(round(value, int(precision or 0))) == gold.strip()
    return answer.strip() == gold.strip()


# ── short answers (lmms-eval's SLAKE scorer; ours for VQA-RAD) ─────────────────────────────────────

_PARENTHETICAL = re.compile(r"\([^)]*\)|（[^）]*）")
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}，。！？；：、“”‘’《》【】]")
_YES = {"yes", "yeah", "yep", "true", "是", "是的", "有", "包含", "可以", "能", "会", "正常"}
_NO = {
    "no",
    "nope",
    "false",
    "否",
    "不是",
    "没有",
    "无",
    "不包含",
    "不能",
    "不会",
    "不可以",
    "不正常",
    "异常",
}


def normalise_short_answer(text: str) -> str:
    """lmms-eval's SLAKE normalisation: lower case, parentheticals dropped, punctuation to spaces,
    spaces collapsed, "x ray" as "xray", yes/no synonyms as yes/no."""
    text = _PARENTHETICAL.sub(" ", str(text).strip().lower())
    text = " ".join(_PUNCTUATION.sub(" ", text).split())
    if text in ("x ray", "xray"):
        return "xray"
    if text in _YES:
        return "yes"
    return "no" if text in _NO else text


def same_short_answer(answer: str, gold: str) -> bool:
    return normalise_short_answer(answer) == normalise_short_answer(gold)


# ── the official scorers' random guess, for the official-compatible score ───────────────────────────


def official_guesses(unanswered: list[list[str]], seed: int) -> list[str]:
    """What a scorer that guesses a random option when it finds none would pick for each unanswered
    item, in item order (MMMU: Python's `random.choice`, seed 42; MMLU-Pro: seed 12345)."""
    rng = random.Random(seed)
    return [rng.choice(letters) for letters in unanswered]
