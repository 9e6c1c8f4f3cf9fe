"""The paper's three prompt templates (X-Reasoner, Appendix C), verbatim, as the user turn's text; the
paper gives no system prompt, so none is sent.

- `training_prompt`: RL prompts (and the SFT user turn).
- `evaluation_prompt`: the multiple-choice template for questions with options, the math template
  otherwise.

Ours, where the paper is silent (its PDF cuts the templates' `{% … %}` fragments): options are rendered
one per line as `A: text`, following the template's own example (`A: Yes`, `B: No`); the math template's
`Options:` part is left out when a question has no options; in the training template, a question with
options carries them as the evaluation templates do (`… Options:\\n\\nA: …`).
"""

from __future__ import annotations

TRAINING_TEMPLATE = (
    "You will solve a problem/request. You should provide your thoughts within <think> </think> tags "
    "before providing the answer.\nWrite your final answer within <answer> </answer> tags. Here is the "
    "question: {question}"
)
CHOICE_TEMPLATE = (
    "You should provide your thoughts within <think> </think> tags, then answer with just one of the "
    "options below within <answer> </answer> tags (For example, if the question is \n'Is the earth "
    "flat?\n A: Yes \nB: No', you should answer with <think>...</think> <answer>B: No </answer>). Here "
    "is the question: {question} Options:\n\n{options}"
)
MATH_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and you as the assistant "
    "solves it. You should first think about the reasoning process in the mind and then provide the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think><answer> the "
    "final answer as the option letter or the number depending on the question </answer> (For example, "
    "if the question is \n'Is the earth flat?\n A: Yes \nB: No', you should answer with <think> your "
    "reasoning </think> <answer>B: No</answer>. If the question is 'What is 1+1?', you should answer "
    "with <think> your reasoning </think> <answer>2 </answer>).\n\nHere is the question: {question}"
)
OPTIONS_PART = " Options:\n\n{options}"


def render_options(options: dict[str, str]) -> str:
    return "\n".join(f"{letter}: {text}" for letter, text in options.items())


def with_options(question: str, options: dict[str, str] | None) -> str:
    """The question followed by its options as the evaluation templates lay them out."""
    return question if not options else question + OPTIONS_PART.format(options=render_options(options))


def training_prompt(question: str, options: dict[str, str] | None = None) -> str:
    return TRAINING_TEMPLATE.format(question=with_options(question, options))


def evaluation_prompt(question: str, options: dict[str, str] | None = None) -> str:
    if options:
        return CHOICE_TEMPLATE.format(question=question, options=render_options(options))
    return MATH_TEMPLATE.format(question=question)


def is_training_prompt(text: str) -> bool:
    """Whether a user turn is already in the training template (SFT data written from it)."""
    return text.startswith(TRAINING_TEMPLATE.split("{question}")[0])
