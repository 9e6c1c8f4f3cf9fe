"""The released X-Reasoner prompt format: thoughts inside `<think> </think>`, the answer inside
`<answer> </answer>`; for multiple choice, "just one of the options", then the question and options."""

from __future__ import annotations

from xr_nemo.eval.benchmarks import EvalItem
from xr_nemo.grpo.prompts import REASONING_SYSTEM_PROMPT

CHOICE_INSTRUCTION = (
    "Provide your thoughts within <think> </think> tags, then answer with just one of the options "
    "within <answer> </answer> tags."
)


def messages(item: EvalItem) -> list[dict[str, str]]:
    if item.options is None:
        return [
            {"role": "system", "content": REASONING_SYSTEM_PROMPT},
            {"role": "user", "content": item.question},
        ]
    options = "\n".join(f"({letter}) {text}" for letter, text in item.options.items())
    text = f"{CHOICE_INSTRUCTION}\n\nQuestion: {item.question}\n\nOptions:\n{options}"
    return [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": text}]
