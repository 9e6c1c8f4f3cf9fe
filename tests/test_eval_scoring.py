"""Evaluation answer extraction on real-looking outputs, and scoring checked by hand."""

import math

import pytest

from xr_nemo.eval.scoring import avg_at_k, majority_at_k, majority_vote, pass_at_k, wilson_interval
from xr_nemo.tasks.extract import Extraction, extract_answer, extract_choice
from xr_nemo.tasks.judges import (
    mathvista_free_form_correct,
    mmmu_open_correct,
    nearest_by_edit_distance,
    nearest_by_similarity,
    official_guesses,
    same_short_answer,
)

OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Clopidogrel"}


@pytest.mark.parametrize(
    ("output", "letter", "method"),
    [
        ("<think>...</think><answer>C</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>(C)</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>[C]</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>**C**</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>C: Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>C. Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>(C) Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>Warfarin</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>warfarin.</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>Warfarin therapy</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>The answer is C</answer>", "C", "answer_tag"),
        ("<think>...</think><answer>\\boxed{\\text{C}}</answer>", "C", "answer_tag"),
        ("<think>...</think>Answer: (C)", "C", "answer_is"),
        ("<think>...</think>**Answer:** C", "C", "answer_is"),
        ("<think>...</think>The correct option is C.", "C", "reply"),
        ("<think>is it A? no</think>\n\\boxed{D}", "D", "boxed"),
        ("<think>A or B</think>\nC", "C", "reply"),
        ("<think>hmm</think> (B)", "B", "reply"),
        ("<think>hmm</think> Looking again, (D) is the one the guidelines favour", "D", "marked_letter"),
        ("<think>hmm</think> " + "Both have merits. " * 12 + "I would pick (D).", "D", "marked_letter"),
        ("<think>hmm</think> " + "Both have merits. " * 12 + "(A) over (B)?", None, "none"),
        ("<think>hmm</think><answer>A or C</answer>", None, "none"),
        ("<think>hmm</think><answer>a decreased dose</answer>", None, "none"),  # not option A
        ("<think>hmm</think>I think it is B", None, "none"),  # not option I
        ("<think>I think the answer is C</think> I am not sure.", None, "none"),  # never from the thinking
        ("The answer is B.", "B", "whole:answer_is"),  # never thought: read whole
        ("<think>endless thinking that never closes", None, "unfinished"),
        ("<think>I think the answer is C", None, "unfinished"),  # never from an open thinking either
        ("", None, "whole:none"),
    ],
)
def test_choice_extraction(output, letter, method):
    found = extract_choice(output, OPTIONS)
    assert (found.answer, found.method) == (letter, method)


@pytest.mark.parametrize(
    ("output", "options", "letter"),
    [
        ("<think>.</think><answer>6 cm</answer>", {"A": "6cm", "B": "8cm"}, "A"),
        ("<think>.</think><answer>145</answer>", {"A": "145°", "B": "35°"}, "A"),
        ("<think>.</think><answer>2.5 %</answer>", {"A": "25%", "B": "2.5%"}, "B"),
        (
            "<think>.</think><answer>Warfarin and aspirin</answer>",
            {"A": "Warfarin", "B": "Warfarin and aspirin"},
            "B",
        ),
        ("<think>.</think><answer>I</answer>", {letter: letter.lower() * 2 for letter in "ABCDEFGHIJ"}, "I"),
    ],
)
def test_option_text_is_matched_after_normalising_units_and_symbols(output, options, letter):
    assert extract_choice(output, options).answer == letter


@pytest.mark.parametrize(
    ("output", "answer", "method"),
    [
        ("<think>...</think><answer>\\frac{3}{4}</answer>", "\\frac{3}{4}", "answer_tag"),
        ("<think>.</think>so x = \\boxed{12}.", "12", "boxed"),
        ("<think>5 or 6</think>The answer is $-2.5$.", "-2.5", "answer_is"),
        ("<think>x</think>\n\n1250", "1250", "reply"),
        ("so x = \\boxed{12}.", "12", "whole:boxed"),
        ("<think>so x = \\boxed{12}.", None, "unfinished"),
        ("<think>x</think>" + " no idea" * 40, None, "none"),
    ],
)
def test_free_form_extraction(output, answer, method):
    found = extract_answer(output)
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
    # votes: the index of the first sample with an equivalent answer. Item 1: samples 0 and 4 agree (say
    # "0.5" and "\\frac{1}{2}"), samples 1 and 2 agree, a tie, the one seen first wins → sample 0, correct.
    # Item 2: no answers. Item 3: 0,1 vs 2,3: a tie → sample 0.
    votes = [[0, 1, 1, None, 0], [None] * 5, [0, 0, 2, 2, 4]]
    assert majority_at_k(votes, correct) == pytest.approx(2 / 3)
    assert majority_at_k(votes, [[False, True, True, False, False], [False] * 5, [False] * 5]) == 0.0
    assert majority_vote([None, 3, 3, 1]) == 3 and majority_vote([None, None]) is None


def test_an_option_text_with_capital_letters_is_not_ambiguous():
    options = {"A": "Vitamin D deficiency", "B": "Type B gastritis", "D": "None"}
    assert extract_choice("<think>.</think><answer>B. Type B gastritis</answer>", options).answer == "B"
    assert extract_choice("<think>.</think><answer>Vitamin D deficiency</answer>", options).answer == "A"
    assert extract_choice("<think>.</think><answer>B or D</answer>", options).answer is None


@pytest.mark.parametrize(
    ("output", "answer", "method"),
    [
        ("<think>look at the left side</think><answer>Left lung.</answer>", "Left lung.", "answer_tag"),
        ("<think>...</think>The answer is yes", "yes", "answer_is"),
        ("<think>...</think>\nMRI\n", "MRI", "reply"),
        ("<think>never closed", None, "unfinished"),
    ],
)
def test_short_answer_extraction(output, answer, method):
    assert extract_answer(output) == Extraction(answer, method)


@pytest.mark.parametrize(
    ("answer", "gold", "same"),
    [  # lmms-eval's SLAKE normalisation, then exact match
        ("X-Ray", "xray", True),
        ("CT (computed tomography)", "ct", True),
        (" Yes. ", "yes", True),
        ("Yeah", "yes", True),
        ("a  CT scan", "CT scan", False),  # no article removal
        ("Yes, the liver", "yes", False),
        ("right lung", "left lung", False),
        ("no", "yes", False),
    ],
)
def test_short_answers_compare_as_lmms_eval_does(answer, gold, same):
    assert same_short_answer(answer, gold) is same


@pytest.mark.parametrize(
    ("answer", "golds", "correct"),
    [  # MMMU's eval_open on the final answer
        ("3.14159", ["3.14"], True),  # numbers at 2 decimals
        ("1.055", ["1.06"], False),  # Python's rounding: 1.055 → 1.05
        ("The total is 6.5 and 7", ["6.5"], True),
        ("Embryonic stage", ["embryonic"], True),  # a gold inside the answer, case-insensitive
        ("embryonic", ["embryonic stage"], False),
        ("x = 24/7", ["24/7", "3.429"], True),  # list-valued golds: any of them
        ("3.429", ["24/7", "3.429"], True),
        ("0.5", ["1/2"], False),
    ],
)
def test_mmmu_open_answers(answer, golds, correct):
    assert mmmu_open_correct(answer, golds) is correct


@pytest.mark.parametrize(
    ("answer", "gold", "answer_type", "precision", "correct"),
    [  # MathVista's typed normalisation
        ("3.7", "3", "integer", None, True),  # int(float(x)) truncates
        ("14.0", "14", "integer", None, True),
        ("1.20", "1.2", "float", 1, True),
        ("1.25", "1.2", "float", 1, True),  # Python's round(1.25, 1) is 1.2
        ("1.234", "1.23", "float", 2, True),
        ("[2014, 2016]", "[2014, 2016]", "list", None, True),
        ("about 12 cm", "12", "integer", None, True),  # ours: the first number of the final answer
        ("no idea", "12", "integer", None, False),
    ],
)
def test_mathvista_free_form_answers(answer, gold, answer_type, precision, correct):
    assert mathvista_free_form_correct(answer, gold, answer_type, precision) is correct


def test_nearest_options_and_official_guesses():
    options = {"A": "145°", "B": "35°", "C": "55°"}
    assert nearest_by_edit_distance("145 degrees", options) == "A"
    assert nearest_by_edit_distance("", options) == "B"  # the shortest text, first on a tie, as MathVista's
    assert nearest_by_similarity("lung", {"A": "Lung", "B": "Liver"}) == "A"
    assert nearest_by_similarity("zzz", {"A": "ab", "B": "cd"}) is None
    random = __import__("random").Random(42)
    expected = [random.choice(list("ABCD")) for _ in range(3)]
    assert official_guesses([list("ABCD")] * 3, 42) == expected
