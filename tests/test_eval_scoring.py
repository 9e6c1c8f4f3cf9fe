"""Evaluation answer extraction on real-looking outputs, and scoring checked by hand."""

import math

import pytest

from xr_nemo.eval.scoring import avg_at_k, majority_at_k, pass_at_k, wilson_interval
from xr_nemo.tasks.extract import Extraction, extract_choice, extract_math

OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Clopidogrel"}


@pytest.mark.parametrize(
    ("output", "letter", "method"),
    [
        ("<think>...</think><answer>C</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>(C)</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>C. Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>warfarin.</answer>", "C", "answer_tag"),
        ("<think>...</think>Answer: (C)", "C", "answer_is"),
        ("The answer is B.", "B", "answer_is"),
        ("<think>is it A? no</think>\n\\boxed{D}", "D", "boxed"),
        ("<think>A or B</think>\nC", "C", "bare_letter"),
        ("<think>hmm</think> (B)", "B", "bare_letter"),
        ("<think>hmm</think> I would pick (A) over (B), so (D) is best.", "D", "marked_letter"),
        ("<think>hmm</think> Option D. is what the guidelines say", "D", "marked_letter"),
        ("<think>hmm</think><answer>A or C</answer>", None, "ambiguous"),
        ("<think>I think the answer is C</think> I am not sure.", None, "none"),
        ("<think>endless thinking that never closes", None, "none"),
        ("", None, "none"),
    ],
)
def test_choice_extraction(output, letter, method):
    found = extract_choice(output, OPTIONS)
    assert (found.answer, found.method) == (letter, method)


@pytest.mark.parametrize(
    ("output", "answer", "method"),
    [
        ("<think>...</think><answer>\\frac{3}{4}</answer>", "\\frac{3}{4}", "answer_tag"),
        ("so x = \\boxed{12}.", "12", "boxed"),
        ("<think>5 or 6</think>The answer is $-2.5$.", "-2.5", "answer_is"),
        ("<think>x</think> The total is 1,250 dollars, after 3 days.", "3", "last_number"),
        ("<think>x</think> She pays 1,250", "1250", "last_number"),
        ("<think>x</think> no idea", None, "none"),
    ],
)
def test_math_extraction(output, answer, method):
    found = extract_math(output)
    assert (found.answer, found.method) == (answer, method)


def test_wilson_interval_by_hand():
    # p = 0.8, n = 100: centre (p + z²/2n) / (1 + z²/n), half z·√(p(1-p)/n + z²/4n²) / (1 + z²/n)
    z = 1.959963984540054
    centre = (0.8 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.8 * 0.2 / 100 + z * z / 40000) / (1 + z * z / 100)
    low, high = wilson_interval(80, 100)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.7111, 0.8666), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_sampled_metrics_by_hand():
    correct = [[True, False, False, False, False], [False] * 5, [True] * 5]
    assert avg_at_k(correct) == pytest.approx((0.2 + 0.0 + 1.0) / 3)
    assert pass_at_k(correct) == pytest.approx(2 / 3)
    answers = [["A", "B", "B", None, "A"], [None] * 5, ["C", "C", "D", "D", "E"]]
    # item 1: A and B tie at 2, A seen first → A; item 2: no answer; item 3: C and D tie, C first
    assert majority_at_k(answers, ["A", "B", "D"]) == pytest.approx(1 / 3)
    assert majority_at_k(answers, ["B", "B", "C"]) == pytest.approx(1 / 3)


def test_an_option_text_with_capital_letters_is_not_ambiguous():
    options = {"A": "Vitamin D deficiency", "B": "Type B gastritis", "D": "None"}
    assert extract_choice("<answer>B. Type B gastritis</answer>", options).answer == "B"
    assert extract_choice("<answer>Vitamin D deficiency</answer>", options).answer == "A"
    assert extract_choice("<answer>B or D</answer>", options).method == "ambiguous"


@pytest.mark.parametrize(
    ("output", "answer", "method"),
    [
        ("<think>look at the left side</think><answer>Left lung.</answer>", "Left lung.", "answer_tag"),
        ("<think>...</think>The answer is yes", "yes", "answer_is"),
        ("<think>...</think>\nMRI\n", "MRI", "short_reply"),
        ("<think>...</think>\nIt could be CT.\nOr maybe MRI, I cannot tell.", None, "none"),
        ("<think>never closed", None, "none"),
    ],
)
def test_short_answer_extraction(output, answer, method):
    from xr_nemo.tasks.extract import extract_short

    assert extract_short(output) == Extraction(answer, method)


@pytest.mark.parametrize(
    ("answer", "gold", "same"),
    [
        ("The left lung.", "left lung", True),
        ("YES", "yes", True),
        ("a  CT scan", "CT scan", True),
        ("right lung", "left lung", False),
        ("no", "yes", False),
    ],
)
def test_short_answers_compare_after_normalisation(answer, gold, same):
    from xr_nemo.tasks.extract import same_short_answer

    assert same_short_answer(answer, gold) is same
