"""Records of the supported schemas → chat messages, in the paper's format.

Schemas: OpenThoughts (`system` + `conversations` of `{from, value}`), `messages` (`{role, content}`),
and `{prompt, response}`. With `data.template=paper` (the default) the first user turn becomes the
paper's training template around the question, system turns are dropped (the paper has none; a
`data.system_prompt` is still honoured), and every assistant turn becomes
`<think>\n{thought}\n</think>\n\n{solution}\n\n<answer>{final answer}</answer>`: OpenThoughts'
`<|begin_of_thought|> … <|end_of_thought|> <|begin_of_solution|> … <|end_of_solution|>` sections (or
`<think> … </think>` and what follows) give the thought and the solution.

The answer tags hold the final answer only, as the paper's templates ask, so that a model answers in a
few tokens — what is left after a forced exit. Ours: the final answer is the solution's last complete
`\boxed{…}` value, and the solution text stays before it (its box included); a solution without a box
(code, prose) is the answer itself, `<answer>{solution}</answer>`; a solution that already has answer
tags keeps its last tagged answer alone (distilled traces). A response without thoughts is trained the
same way without the thinking (direct-answer data). With `data.template=none` turns stay as they are and
only the reasoning moves into `<think>` tags.
"""

from __future__ import annotations

import re
from typing import Any

from xr_nemo.data.prompt_format import is_training_prompt, training_prompt
from xr_nemo.data.records import DataError, Record

SCHEMAS = ("openthoughts", "messages", "prompt_response")
ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
_OPEN_THOUGHTS = re.compile(
    r"<\|begin_of_thought\|>(?P<thought>.*?)<\|end_of_thought\|>\s*"
    r"<\|begin_of_solution\|>(?P<solution>.*?)(?:<\|end_of_solution\|>|$)",
    re.DOTALL,
)
_THINK = re.compile(r"<think>(?P<thought>.*?)</think>(?P<solution>.*)", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
BOX = "\\boxed{"
_DEPTH = {"{": 1, "}": -1}

Message = dict[str, str]


def detect_schema(fields: dict[str, Any]) -> str | None:
    if "conversations" in fields:
        return "openthoughts"
    if "messages" in fields:
        return "messages"
    if "prompt" in fields and "response" in fields:
        return "prompt_response"
    return None


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}", where=where)
    return value


def _turns(record: Record, key: str, role_key: str, text_key: str) -> list[Message]:
    turns = record.fields.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"'{key}' must be a non-empty list", where=record.where, fix="drop or fix the record")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise DataError(
                f"{key}[{index}] must be an object with '{role_key}' and '{text_key}'", where=record.where
            )
        role = ROLE_NAMES.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            raise DataError(
                f"{key}[{index}] has unknown role {turn[role_key]!r}",
                where=record.where,
                fix=f"use one of {sorted(ROLE_NAMES)}",
            )
        messages.append(
            {"role": role, "content": _text(turn[text_key], f"{key}[{index}].{text_key}", record.where)}
        )
    return messages


def to_messages(record: Record, schema: str = "auto") -> list[Message]:
    """Validated messages: optional system first, then user/assistant turns, ending with the assistant."""
    kind = detect_schema(record.fields) if schema == "auto" else schema
    if kind == "openthoughts":
        messages = _turns(record, "conversations", "from", "value")
        system = record.fields.get("system")
        if system:
            messages.insert(0, {"role": "system", "content": _text(system, "system", record.where)})
    elif kind == "messages":
        messages = _turns(record, "messages", "role", "content")
    elif kind == "prompt_response":
        messages = [
            {"role": "user", "content": _text(record.fields.get("prompt"), "prompt", record.where)},
            {"role": "assistant", "content": _text(record.fields.get("response"), "response", record.where)},
        ]
    else:
        raise DataError(
            f"cannot tell the schema from the fields {sorted(record.fields)}",
            where=record.where,
            fix="records need 'conversations' (OpenThoughts), 'messages', or 'prompt' and 'response'",
        )
    _check_order(messages, record.where)
    return messages


def _check_order(messages: list[Message], where: str) -> None:
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body or body[-1]["role"] != "assistant":
        raise DataError("the conversation must end with an assistant turn", where=where)
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(
                f"turn {index} is {message['role']!r}, expected {expected!r} (user and assistant alternate)",
                where=where,
            )
    if any(not message["content"].strip() for message in body):
        raise DataError("a user or assistant turn is empty", where=where)


def final_box(text: str) -> str | None:
    """The content of the last complete `\\boxed{…}` of `text` (nested braces kept), or None when it has
    none or only empty ones."""
    start = len(text)
    while (start := text.rfind(BOX, 0, start)) >= 0:
        depth = 0
        for position in range(start + len(BOX) - 1, len(text)):
            depth += _DEPTH.get(text[position], 0)
            if depth == 0:
                content = text[start + len(BOX) : position].strip()
                if content:
                    return content
                break
    return None


def answer_part(solution: str) -> str:
    """The solution as it ends a target: the final answer in `<answer>` tags (see the module docstring)."""
    tagged = _ANSWER.findall(solution)
    if tagged:
        return f"<answer>{tagged[-1].strip()}</answer>"
    boxed = final_box(solution)
    return f"<answer>{solution}</answer>" if boxed is None else f"{solution}\n\n<answer>{boxed}</answer>"


def reasoning_format(response: str, answer_tags: bool) -> str:
    """Thoughts in `<think>\n…\n</think>\n\n`, then the solution (ending in its final answer in
    `<answer>…</answer>` if asked)."""
    match = _OPEN_THOUGHTS.search(response) or _THINK.search(response)
    if match is None:
        return answer_part(response.strip()) if answer_tags else response
    thought, solution = match["thought"].strip(), match["solution"].strip()
    if not thought and not solution:
        raise ValueError("the response's thought and solution are both empty")
    if answer_tags:
        solution = answer_part(solution)
    return f"<think>\n{thought}\n</think>\n\n{solution}"


def _check_control_tokens(messages: list[Message], control_tokens: tuple[str, ...], where: str) -> None:
    """Text that spells a control token (`<|im_end|>`, `<|image_pad|>`, …) would be tokenised as the
    real one — ending turns early, or claiming an image that is not there — and trained on. Such records
    are refused (ours: not escaped), so what is trained is what the data says."""
    for message in messages:
        found = next((token for token in control_tokens if token in message["content"]), None)
        if found is not None:
            raise DataError(
                f"a {message['role']} turn contains the text {found!r}, which the tokenizer reads as its "
                "control token",
                where=where,
            )


def _paper_prompt(messages: list[Message]) -> list[Message]:
    """No system turn; the first user turn in the training template (unless the data already has it)."""
    body = [m for m in messages if m["role"] != "system"]
    first = body[0]["content"]
    if not is_training_prompt(first):
        body[0] = {"role": "user", "content": training_prompt(first)}
    return body


def prepare(
    record: Record,
    schema: str,
    template: str = "paper",
    system_prompt: str | None = None,
    control_tokens: tuple[str, ...] = (),
) -> list[Message]:
    messages = to_messages(record, schema)
    _check_control_tokens(messages, control_tokens, record.where)
    paper = template == "paper"
    if paper:
        messages = _paper_prompt(messages)
    if system_prompt is not None:
        messages = [m for m in messages if m["role"] != "system"]
        messages.insert(0, {"role": "system", "content": system_prompt})
    try:
        return [
            {**m, "content": reasoning_format(m["content"], paper)} if m["role"] == "assistant" else m
            for m in messages
        ]
    except ValueError as error:
        raise DataError(str(error), where=record.where) from None
