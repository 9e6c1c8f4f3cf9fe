"""Answer extraction for evaluation: the rewards' rules (`xr_nemo.rewards`), applied to what a benchmark's
own scorer would read.

- A response that closed its thinking is read after the last `</think>`, as the reward reads it.
- One that opened `<think>` and never closed it has no answer (`unfinished`): it never stopped thinking.
  So has one whose prompt opened the thinking (`thinking_opened`: R1-style chat templates, such as
  QwQ-32B's, end the generation prompt in `<think>`) and that never closed it.
- One that never opened `<think>` is read whole, by the same rules. Baselines such as
  Qwen2.5-VL-7B-Instruct answer "The answer is (B).", "Yes" or "#### 18" without thinking, and the
  benchmarks' scorers (MMMU, MathVista, GSM8K) read the whole response; so do we. Its rule is recorded
  with the prefix `whole:` (`whole:answer_is`, `whole:none`), so a report can tell these apart.

Every prediction records the rule that found its answer (answer_tag, answer_tag_cut, boxed, hashes,
answer_is, reply, marked_letter; none or unfinished when there is none), so a surprising score can be
traced to the outputs. Multiple choice: `xr_nemo.rewards.choice.choice_in`. Free-form math and short
answers: the final answer as written, then judged by the benchmark's rule (`xr_nemo.tasks.judges`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xr_nemo.rewards.choice import choice_in
from xr_nemo.rewards.extract import after_thinking, located_answer

OPEN_THINKING = "<think>"
WHOLE = "whole:"  # the method prefix of a response read whole: it never opened a thinking
UNFINISHED = "unfinished"


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # an option letter for multiple choice; the answer text otherwise
    method: str  # the rule that found it (see the module's docstring), `whole:` first when read whole


def _read(output: str, reader: Callable[[str], tuple[str | None, str]], thinking_opened: bool) -> Extraction:
    """After a closed thinking; nothing from one still open; the whole of a response that never thought."""
    text = after_thinking(output)
    if text is not None:
        return Extraction(*reader(text))
    if thinking_opened or OPEN_THINKING in output:
        return Extraction(None, UNFINISHED)
    answer, method = reader(output)
    return Extraction(answer, WHOLE + method)


def extract_choice(output: str, options: dict[str, str], *, thinking_opened: bool = False) -> Extraction:
    """The option letter a response chose; `thinking_opened`: its prompt ended in `<think>`."""
    return _read(output, lambda text: choice_in(text, options), thinking_opened)


def extract_answer(output: str, *, thinking_opened: bool = False) -> Extraction:
    """The final answer of a free-form (math or short-answer) response; `thinking_opened`: its prompt
    ended in `<think>`."""
    return _read(output, located_answer, thinking_opened)


def template_opens_thinking(tokenizer) -> bool:
    """Whether a model's chat template opens `<think>` itself in the generation prompt (QwQ-32B and
    other R1-style templates do): its completions then start inside the thinking, without the tag."""
    probe = [{"role": "user", "content": "\x00"}]
    tail = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True).split("\x00")[-1]
    return "<think>" in tail and "</think>" not in tail
