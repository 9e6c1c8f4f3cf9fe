"""Rewards: answer extraction, agreement with math-verify on equivalent / non-equivalent answers,
multiple choice and format, and the worker pool's hard deadline on hostile completions."""

import time

import pytest
from math_verify import parse, verify

from xr_nemo.rewards.choice import choice_reward
from xr_nemo.rewards.extract import final_answer
from xr_nemo.rewards.format import format_reward
from xr_nemo.rewards.math import math_reward
from xr_nemo.rewards.pool import RewardPool, RewardSpec, RewardTask

# (final answer as the model writes it, gold answer, equivalent?)
MATH_TABLE = [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", True),
    ("[0, 1)", "[0,1)", True),
    ("(0, 1]", "[0, 1)", False),
    ("x^2 + 2x + 1", "(x+1)^2", True),
    ("42", "42", True),
    ("42", "24", False),
    ("-3", "3", False),
    ("\\pi", "3.14159265358979", True),
    ("10\\%", "10", True),
    ("1,000", "1000", True),
    ("\\frac{2}{3}", "0.67", False),
    ("\\infty", "\\infty", True),
    ("3", "\\frac{6}{2}", True),
    ("7", "8", False),
]


@pytest.mark.parametrize(("answer", "gold", "expected"), MATH_TABLE)
def test_math_reward_agrees_with_math_verify(answer, gold, expected):
    reference = verify(parse(f"${gold}$"), parse(f"${answer}$"))
    assert reference == expected, "the table must agree with math-verify itself"
    completion = f"<think>\nwork it out\n</think>\n<answer>{answer}</answer>"
    assert math_reward(completion, gold) == float(expected)
    assert math_reward(f"<think>w</think>So the result is \\boxed{{{answer}}}.", gold) == float(expected)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<answer>5</answer>", "5"),
        ("first \\boxed{3} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("<answer>x = \\boxed{4}</answer>", "4"),
        ("The answer is 12.", "12"),
        ("Final answer: $7$", "7"),
        ("\\boxed{\\left\\{1,2\\right\\}}", "\\left\\{1,2\\right\\}"),
        ("\n\n42\n", "42"),  # a short reply after the thinking is the answer
        ("no conclusion " * 20, None),  # prose is not
        ("\\boxed{unclosed", "\\boxed{unclosed"),
        ("<answer></answer>", None),
    ],
)
def test_final_answer_after_the_thinking(text, answer):
    assert final_answer(f"<think>work</think>{text}") == answer


@pytest.mark.parametrize(
    "completion",
    [
        "<think>so the answer is 12. But let me double-check 12 once more",  # cut at the length limit
        "so the answer is \\boxed{12}. But wait",  # a prompt that opened the thinking, never closed
        "<answer>12</answer>",  # an answer without ever closing the thinking
    ],
)
def test_an_unfinished_response_earns_nothing(completion):
    assert final_answer(completion) is None
    assert math_reward(completion, "12") == 0.0
    assert choice_reward(completion.replace("12", "B"), "B", OPTIONS) == 0.0


def test_thinking_does_not_count_as_the_answer():
    assert math_reward("<think>maybe \\boxed{5}</think> I give up", "5") == 0.0
    assert math_reward("<think>maybe \\boxed{4}</think> <answer>5</answer>", "5") == 1.0


OPTIONS = {"A": "Pneumonia", "B": "Asthma", "C": "A fever", "D": "None of the above"}


@pytest.mark.parametrize(
    ("answer", "reward"),
    [
        *[("C", 1.0), ("(C)", 1.0), ("C. A fever", 1.0), ("option C", 1.0), ("a fever", 1.0), ("[C]", 1.0)],
        *[("The correct option is C", 1.0), ("\\boxed{\\text{C}}", 1.0), ("**C**", 1.0), ("C: A fever", 1.0)],
        *[("B", 0.0), ("Asthma", 0.0), ("(D) None of the above", 0.0), ("E", 0.0), ("fever", 0.0)],
        *[("c", 0.0), ("c.", 0.0)],  # capital letters only: "c" is not option C...
        *[("c fever", 0.0)],  # ...nor an option's text
    ],
)
def test_choice_reward(answer, reward):
    assert choice_reward(f"<think>hmm</think><answer>{answer}</answer>", "C", OPTIONS) == reward


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("step one\n</think>\n<answer>4</answer>", 1.0),
        ("<think>step one</think> <answer>4</answer>\n", 1.0),
        ("<answer>4</answer>", 0.0),
        ("<think>a</think><answer>4</answer> and more", 0.0),
        ("<think>a</think>", 0.0),
        ("<think></think><answer>4</answer>", 0.0),
        ("<think>a</think><answer><answer>4</answer></answer>", 0.0),
    ],
)
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward


HOSTILE = [
    "\\boxed{" + "{" * 3000 + "}",  # thousands of unclosed braces
    "<answer>9^{9^{9^{9}}}</answer>",  # a number too big to ever evaluate
    "\\boxed{" + "9" * 200_000 + "}",  # a 200,000-digit number
    "x" * 5_000_000,  # five megabytes of nothing
    "<answer>" + "\\frac{" * 400 + "1" + "}{2}" * 400 + "</answer>",  # deeply nested LaTeX
    "\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{" * 50,
]


def test_hostile_completions_return_within_the_deadline_and_the_pool_survives():
    timeout = 2.0
    with RewardPool(RewardSpec(), workers=2, timeout_s=timeout) as pool:
        pool.score([RewardTask("\\boxed{1}", "1")])  # workers up and imported
        start = time.monotonic()
        scores = pool.score([RewardTask(f"<think>t</think>{text}", "2") for text in HOSTILE])
        elapsed = time.monotonic() - start
        assert [s.reward for s in scores] == [0.0] * len(HOSTILE)
        assert elapsed < timeout * len(HOSTILE) / 2 + 5, elapsed  # two workers, each answer ≤ deadline
        again = pool.score([RewardTask("<think>t</think><answer>\\frac{1}{2}</answer>", "0.5")] * 4)
        assert [s.reward for s in again] == [1.0] * 4


def test_pool_scores_in_order_with_format_weight():
    spec = RewardSpec(correctness="auto", format_weight=0.5)
    tasks = [
        RewardTask("a</think><answer>3</answer>", "3"),
        RewardTask("<answer>3</answer>", "3"),
        RewardTask("a</think><answer>B</answer>", "B", {"A": "x", "B": "y"}),
        RewardTask("a</think><answer>2</answer>", "3"),
    ]
    with RewardPool(spec, workers=2, timeout_s=10) as pool:
        assert [s.reward for s in pool.score(tasks)] == [1.5, 0.0, 1.5, 0.5]  # 2nd: thinking never closed


def test_a_gold_math_verify_cannot_read_is_compared_as_a_string_and_reported():
    from xr_nemo.rewards.math import math_score
    from xr_nemo.rewards.pool import RewardSpec, RewardTask, score_task

    assert math_score("<think>t</think><answer>1/2</answer>", "0.5") == (1.0, True)
    unreadable = "???"
    assert math_score(f"<think>t</think><answer>{unreadable}</answer>", unreadable) == (1.0, False)
    assert math_score("<think>t</think><answer>??</answer>", unreadable) == (0.0, False)
    wrong = RewardTask("<think>t</think><answer>x</answer>", unreadable)
    assert score_task(wrong, RewardSpec()).gold_unreadable
    assert not score_task(RewardTask("<think>t</think><answer>x</answer>", "2"), RewardSpec()).gold_unreadable


@pytest.mark.parametrize(
    ("completion", "gold", "options", "reward"),
    [
        ("<think>\n2 + 3 = 5.\n</think>\n\n<answer>5</answer>", "5", None, 1.0),
        ("<think>\nso 5, or 6?\n</think>\n\n<answer>6</answer>", "5", None, 0.0),
        ("<think>\nthe drug.\n</think>\n\n<answer>C: A fever</answer>", "C", OPTIONS, 1.0),
        ("<think>\nso the answer is C. But wait", "C", OPTIONS, 0.0),
    ],
)
def test_rewards_read_the_same_after_a_round_trip_through_either_vocabulary(
    any_tokenizer, completion, gold, options, reward
):
    """What the engine returns is token ids; the reward reads their decoded text. With either
    vocabulary (Qwen2.5's has no `</think>` token) the decoded completion scores as the text does."""
    text = any_tokenizer.decode(any_tokenizer.encode(completion, add_special_tokens=False))
    score = choice_reward(text, gold, options) if options else math_reward(text, gold)
    assert score == reward
