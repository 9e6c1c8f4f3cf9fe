"""The three Appendix C templates, rendered for a fixed question, against the text written out by hand
from the paper (a newline where the paper writes `\\n`)."""

from xr_nemo.data.prompt_format import evaluation_prompt, training_prompt

QUESTION = "What is 2 + 3?"
OPTIONS = {"A": "4", "B": "5"}


def test_training_template_verbatim():
    assert training_prompt(QUESTION) == (
        "You will solve a problem/request. You should provide your thoughts within <think> </think> tags "
        "before providing the answer.\n"
        "Write your final answer within <answer> </answer> tags. Here is the question: What is 2 + 3?"
    )
    assert training_prompt(QUESTION, OPTIONS).endswith(
        "Here is the question: What is 2 + 3? Options:\n\nA: 4\nB: 5"
    )


def test_multiple_choice_template_verbatim():
    assert evaluation_prompt(QUESTION, OPTIONS) == (
        "You should provide your thoughts within <think> </think> tags, then answer with just one of the "
        "options below within <answer> </answer> tags (For example, if the question is \n"
        "'Is the earth flat?\n"
        " A: Yes \n"
        "B: No', you should answer with <think>...</think> <answer>B: No </answer>). Here is the question: "
        "What is 2 + 3? Options:\n"
        "\n"
        "A: 4\n"
        "B: 5"
    )


def test_math_template_verbatim():
    assert evaluation_prompt(QUESTION) == (
        "A conversation between User and Assistant. The user asks a question, and you as the assistant "
        "solves it. You should first think about the reasoning process in the mind and then provide the "
        "user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think><answer> the "
        "final answer as the option letter or the number depending on the question </answer> (For example, "
        "if the "
        "question is \n"
        "'Is the earth flat?\n"
        " A: Yes \n"
        "B: No', you should answer with <think> your reasoning </think> <answer>B: No</answer>. If the "
        "question is 'What is 1+1?', you should answer with <think> your reasoning </think> <answer>2 "
        "</answer>).\n"
        "\n"
        "Here is the question: What is 2 + 3?"
    )
