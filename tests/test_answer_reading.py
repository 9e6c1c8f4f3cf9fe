"""Where evaluation reads an answer (after a closed thinking; nowhere in an unfinished one; the whole of a
response that never thought), checked against what the benchmarks' own scorers read in baseline-style
responses, and answers read after a forced exit or a cut, with both vocabularies."""

import pytest

from xr_nemo.generation.engine import Completion, ForcedExit, Sampling, chat_stop_ids, generate_from_seeds
from xr_nemo.rewards.choice import choice_reward
from xr_nemo.rewards.extract import final_answer
from xr_nemo.rewards.math import math_reward
from xr_nemo.tasks.extract import Extraction, extract_answer, extract_choice
from xr_nemo.tasks.judges import mmmu_open_correct, same_short_answer

OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Clopidogrel"}

# Responses without a thinking, as instruction-tuned baselines write them, and the option each official
# scorer picks, worked out by hand from the scorer's code (its rule that fires is named).
OFFICIAL_CHOICES = [
    ("The answer is (B).", "B"),  # MMLU-Pro: `answer is \(?([A-J])\)?`; MMMU: "(B)" in it
    ("The answer is B", "B"),  # MMLU-Pro: `answer is \(?([A-J])\)?`
    ("B", "B"),  # MMMU: " B " in " B "
    ("Answer: C", "C"),  # MMMU-Pro: the one option letter after the last "Answer:"
    ("(D) Clopidogrel", "D"),  # MMMU: "(D)", its only bracketed letter
    (
        "Heparin acts at once through antithrombin, while warfarin takes days to work. "
        "Therefore, the answer is (B).",
        "B",  # MMLU-Pro: `answer is \(?([A-J])\)?`; MMMU: "(B)", its only bracketed letter
    ),
    (
        "The drug to start is warfarin, continued for at least three months after the event.",
        "C",  # MMMU: no letter; more than 5 words, and "warfarin" the one option text in it
    ),
    ("<answer>C: Warfarin</answer>", "C"),  # MMLU-Pro: the last standalone capital A-J
    ("Warfarin", "C"),  # MathVista: the response is one of the choices
]


@pytest.mark.parametrize(("response", "official"), OFFICIAL_CHOICES)
def test_a_response_without_thinking_is_read_as_the_official_scorers_read_it(response, official):
    found = extract_choice(response, OPTIONS)
    assert found.answer == official and found.method.startswith("whole:")


@pytest.mark.parametrize(
    ("response", "official"),
    [
        ("#### 18", "18"),  # GSM8K (lm-eval strict-match): `#### (\-?[0-9\.\,]+)`
        (
            "She has 16 - 3 - 4 = 9 eggs left each day. She sells them at $2 each, so she makes "
            "9 * 2 = $18 every day. That is the money she takes home from the farmers' market, "
            "every single day of the week.\n#### 18",
            "18",  # GSM8K strict-match, in a response too long to be a short reply
        ),
        ("18", "18"),  # MathVista, integer answer: int(response)
    ],
)
def test_a_free_form_answer_without_thinking_is_the_official_one(response, official):
    found = extract_answer(response)
    assert found.answer == official and found.method.startswith("whole:")


@pytest.mark.parametrize(
    ("response", "gold", "correct"),
    [  # lmms-eval's SLAKE: normalised exact match
        ("Yes", "yes", True),
        ("Yes.", "yes", True),
        ("The left lung.", "left lung", False),  # no article removal there either
    ],
)
def test_a_short_answer_without_thinking_is_judged_as_slake_judges_it(response, gold, correct):
    answer = extract_answer(response).answer
    assert answer is not None and same_short_answer(answer, gold) is correct


def test_an_open_mmmu_answer_without_thinking_is_judged_as_mmmu_judges_it():
    # MMMU's parse_open_response: "is " → "6.5 n" and the number 6.5; eval_open: 6.5 == 6.5
    answer = extract_answer("The total force is 6.5 N").answer
    assert answer is not None and mmmu_open_correct(answer, ["6.5"])


@pytest.mark.parametrize("response", [r for r, _ in OFFICIAL_CHOICES[:3]])
def test_an_opened_thinking_that_never_closed_has_no_answer(response):
    """Also when the prompt opened it (R1-style chat templates): the response is all thinking."""
    assert extract_choice(f"<think>\n{response}", OPTIONS).method == "unfinished"
    assert extract_choice(response, OPTIONS, thinking_opened=True).method == "unfinished"
    assert extract_answer(response, thinking_opened=True).method == "unfinished"


@pytest.mark.parametrize(("response", "official"), OFFICIAL_CHOICES)
def test_the_reward_pays_nothing_for_an_answer_without_thinking(response, official):
    assert choice_reward(response, official, OPTIONS) == 0.0
    assert choice_reward(f"<think>hmm</think>{response}", official, OPTIONS) == 1.0


def test_the_math_reward_pays_nothing_for_an_answer_without_thinking():
    assert math_reward("#### 18", "18") == 0.0
    assert math_reward("<think>9 * 2</think>\n#### 18", "18") == 1.0


WORKING = (
    "She has 16 - 3 - 4 = 9 eggs left each day and sells each one for $2, "
    "so each day's eggs bring in 9 times 2 dollars at the market. "
) * 2  # longer than a short reply, with nothing that reads as an answer

LONG = WORKING * 5  # over 1,000 characters


@pytest.mark.parametrize(
    ("text", "answer", "method"),
    [
        ("<answer>" + WORKING + "So \\boxed{18}. " + LONG + "</answer>", "18", "answer_tag"),
        ("<answer>" + LONG + "so the answer is 18.</answer>", "18", "answer_tag"),
        ("<answer>" + LONG + "</answer>", None, "none"),  # the cap, when nothing inside is an answer
        ("<answer>" + LONG + "\\boxed{18} and more", "18", "answer_tag_cut"),
        ("<answer>So the answer is 18.\nTo check it again", "18", "answer_tag_cut"),
        ("<answer>So the answer is 1", None, "none"),  # may have been cut from "18"
        ("<answer>Hence \\boxed{1", None, "none"),
        ("<answer>Counting again:\n#### 1", None, "none"),
        ("<answer>Counting again:\n#### 18\nwhich is", "18", "answer_tag_cut"),
        ("\\boxed{18}\n\n<answer>Because 16 - 3", "18", "boxed"),  # read before the cut tag
        ("<answer>17</answer> no: <answer>\\boxed{18} since", "18", "answer_tag_cut"),
        ("#### 1. Count the eggs\n" + WORKING, None, "none"),  # a Markdown heading, not GSM8K's line
    ],
)
def test_long_and_cut_answer_tags(text, answer, method):
    assert extract_answer(f"<think>t</think>\n\n{text}") == Extraction(answer, method)
    assert final_answer(f"<think>t</think>\n\n{text}") == answer  # the reward reads the same


class ScriptedModel:
    """Writes `thinking`, and once a forced exit's suffix ends what it wrote, `answer`: an engine whose
    completions `generate_from_seeds` composes as it does a real one's. Prompts are `[0]` plus what was
    written so far."""

    collective = False

    def __init__(self, thinking: list[int], answer: list[int], suffix: list[int]) -> None:
        self.thinking, self.answer, self.suffix = thinking, answer, suffix

    def sample(self, prompts, seeds, sampling):
        completions = []
        for prompt in prompts:
            written = list(prompt[1:])
            forced = bool(written) and written[-len(self.suffix) :] == self.suffix
            tokens = (self.answer if forced else self.thinking[len(written) :])[: sampling.max_new_tokens]
            finished = bool(tokens) and tokens[-1] in sampling.stop_token_ids
            completions.append(Completion(tokens, [0.0] * len(tokens), finished=finished))
        return completions


THINKING = "<think>\n" + "Let me count the eggs once more, and then once more. " * 30  # never closes
ANSWERS = {  # what the model writes after `</think>`
    "short tag": WORKING + "\n\n<answer>18</answer>",
    "box in a long tag": "<answer>" + WORKING + "She makes \\boxed{18} dollars. " + LONG + "</answer>",
    "statement in a tag": "<answer>" + WORKING + "So the answer is 18.\n" + WORKING + "</answer>",
}


def _reads(tokenizer, model: ScriptedModel, forced_exit: ForcedExit | None, totals: range) -> list:
    """Evaluation's (answer, method) for the model's completion at each token budget, decoded as
    evaluation decodes it."""
    stops = chat_stop_ids(tokenizer)
    reads = []
    for total in totals:
        sampling = Sampling(total, stop_token_ids=stops, forced_exit=forced_exit)
        completion = generate_from_seeds(model, [[0]], [0], 1, sampling)[0][0]
        output = tokenizer.decode([t for t in completion.token_ids if t not in stops])
        found = extract_answer(output)
        if "</think>" in output:  # after a closed thinking the reward reads the same
            assert final_answer(output) == found.answer
        reads.append((found.answer, found.method))
    return reads


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _read_once_complete(reads: list) -> int:
    """Where "18" is first read. Before it nothing is read but a cut text short enough to be a reply (a
    text cannot tell a cut reply from a short answer; the recipes' 256-token answer budget leaves more
    than 200 characters); from it on, always "18"."""
    answers = [answer for answer, _ in reads]
    first = answers.index("18")
    assert all(answer is None or method.endswith("reply") for answer, method in reads[:first])
    assert set(answers[first:]) == {"18"}
    return first


@pytest.mark.parametrize("name", ANSWERS)
def test_an_answer_after_a_forced_exit_is_read_once_complete_and_never_cut(any_tokenizer, name):
    """The thinking is cut at 48 tokens, `\\n</think>\\n\\n` appended, and the answer cut at every
    budget: no answer is read from a cut one (never "1" for "18"), and "18" from the first budget that
    holds a complete one on."""
    budget, stop = 48, chat_stop_ids(any_tokenizer)[0]
    forced_exit = ForcedExit.of(any_tokenizer, budget)
    answer = [*_encode(any_tokenizer, ANSWERS[name]), stop]
    model = ScriptedModel(_encode(any_tokenizer, THINKING), answer, list(forced_exit.suffix_ids))
    reads = _reads(any_tokenizer, model, forced_exit, range(budget + 1, budget + 10 + len(answer)))
    first = _read_once_complete(reads)
    assert reads[-1][1] == "answer_tag"
    if name != "short tag":  # a tag cut before `</answer>` gives the complete answer inside it
        assert reads[first][1] == "answer_tag_cut"


def test_a_cut_response_is_unfinished_until_its_thinking_closes_then_read_once_complete(any_tokenizer):
    """No forced exit: a response closes its thinking itself and is cut by the token budget."""
    stop = chat_stop_ids(any_tokenizer)[0]
    text = "<think>\nNine eggs are left.\n</think>\n\n" + ANSWERS["box in a long tag"]
    script = [*_encode(any_tokenizer, text), stop]
    opened = next(k for k in range(len(script)) if "<think>" in any_tokenizer.decode(script[:k]))
    reads = _reads(any_tokenizer, ScriptedModel(script, [], [-1]), None, range(opened, len(script) + 1))
    closes = next(k for k, (_, method) in enumerate(reads) if method != "unfinished")
    assert closes > 0 and {method for _, method in reads[:closes]} == {"unfinished"}
    _read_once_complete(reads[closes:])
