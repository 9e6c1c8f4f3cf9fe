"""The released X-Reasoner prompt format, one definition for training (GRPO prompts, distillation) and
evaluation: thoughts inside `<think> </think>`, the answer inside `<answer> </answer>`; a multiple-choice
question asks for "just one of the options", then lists them as `(A) …`."""

from __future__ import annotations

REASONING_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the problem step by step inside <think> </think> "
    "tags, then give the final answer inside <answer> </answer> tags."
)
CHOICE_INSTRUCTION = (
    "Provide your thoughts within <think> </think> tags, then answer with just one of the options "
    "within <answer> </answer> tags."
)


def user_text(question: str, options: dict[str, str] | None) -> str:
    """The user turn's text: the question as is, or the multiple-choice instruction, question and options."""
    if options is None:
        return question
    listed = "\n".join(f"({letter}) {option}" for letter, option in options.items())
    return f"{CHOICE_INSTRUCTION}\n\nQuestion: {question}\n\nOptions:\n{listed}"
