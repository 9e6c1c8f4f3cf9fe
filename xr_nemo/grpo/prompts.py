"""RL prompts with verifiable answers: Orz-Math-57k pairs and generic `{prompt, answer}` records
(optionally multiple choice, with `options`), rendered through the chat template once, up front.

Bad records stop the run with file:line (or are skipped and counted with `data.on_error=skip`), as in SFT;
a multiple-choice question with fewer than two options is one (its reward would be free). A math gold
math-verify cannot read is always skipped and counted with its place: its reward could only come from
matching it as a string, so it would teach nothing.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from xr_nemo.data.prompt_format import training_prompt, with_options
from xr_nemo.data.records import TURN_PAIR, DataError, Record, read_records
from xr_nemo.errors import ConfigError
from xr_nemo.tasks.benchmark import UnreadableGold, check_question, gold_letter, lettered, text

SCHEMAS = ("orz", "prompt_answer")
_QUESTION_KEYS = ("prompt", "question", "problem")


@dataclass(frozen=True)
class PromptItem:
    where: str
    question: str
    answer: str
    options: dict[str, str] | None = None  # letter → text for multiple choice; `answer` is the letter


@dataclass
class PromptSet:
    items: list[PromptItem]
    token_ids: list[list[int]]
    skipped: list[str] = field(default_factory=list)  # "where: why" of each skipped record
    too_long: int = 0

    def __len__(self) -> int:
        return len(self.items)


def detect_schema(fields: dict[str, Any]) -> str | None:
    if TURN_PAIR in fields:
        return "orz"
    if any(key in fields for key in _QUESTION_KEYS) and "answer" in fields:
        return "prompt_answer"
    return None


def _orz(record: Record) -> PromptItem:
    if TURN_PAIR not in record.fields:
        raise DataError(
            f"data.schema=orz reads [question turn, answer turn] pairs (items of a .json list); this record "
            f"is an object with fields {sorted(record.fields)[:8]}",
            where=record.where,
        )
    pair = record.fields[TURN_PAIR]
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, dict) for t in pair)):
        raise DataError("an Orz item must be [question turn, answer turn]", where=record.where)
    question, answer = pair
    truth = answer.get("ground_truth")
    if not isinstance(truth, dict):
        raise DataError("the answer turn has no 'ground_truth' object", where=record.where)
    return PromptItem(
        record.where,
        text(question.get("value"), "the question turn's 'value'", record.where),
        text(truth.get("value"), "'ground_truth.value'", record.where),
    )


def _options(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return lettered(value, where)
    if not isinstance(value, dict) or not value:
        raise DataError("'options' must be a non-empty list or {letter: text} object", where=where)
    letters = [str(k).strip().upper() for k in value]
    if any(len(letter) != 1 or letter not in string.ascii_uppercase for letter in letters):
        raise DataError(
            f"options must be keyed by letters A–Z, got {list(value)[:5]}",
            where=where,
            fix="key them A, B, C, … (and give the answer as that letter), or give the options as a list",
        )
    return {
        letter: text(v, f"option {k}", where) for letter, (k, v) in zip(letters, value.items(), strict=True)
    }


def _prompt_answer(record: Record) -> PromptItem:
    key = next((k for k in _QUESTION_KEYS if k in record.fields), None)
    missing = ([] if key else ["prompt (or question, problem)"]) + (
        [] if "answer" in record.fields else ["answer"]
    )
    if missing:
        raise DataError(
            f"data.schema=prompt_answer needs {' and '.join(missing)}; the record has fields "
            f"{sorted(record.fields)[:8]}",
            where=record.where,
        )
    options = _options(record.fields.get("options"), record.where)
    answer = record.fields["answer"]
    return PromptItem(
        record.where,
        text(record.fields[key], f"'{key}'", record.where),
        gold_letter(answer, options, record.where) if options else text(answer, "'answer'", record.where),
        options,
    )


def check_schema(schema: str) -> None:
    """`data.schema` is auto, orz, prompt_answer or a text benchmark's reader (checked before launch)."""
    from xr_nemo.tasks.benchmarks import REGISTRY

    text_benchmarks = sorted(name for name, cls in REGISTRY.items() if cls.modality == "text")
    if schema not in ("auto", *SCHEMAS, *text_benchmarks):
        raise ConfigError(
            f"unknown prompt schema {schema!r}",
            where="data.schema",
            fix=f"use auto, {', '.join(SCHEMAS)}, or a text benchmark: {', '.join(text_benchmarks)}",
        )


def _benchmark_item(record: Record, schema: str, index: int) -> PromptItem | None:
    """A record read by an evaluation benchmark's reader (`data.schema=medqa`, `medmcqa`, `gsm8k`, …), so
    training and evaluation read one schema one way; None for a record outside the benchmark's subset."""
    from xr_nemo.tasks.benchmarks import REGISTRY

    check_schema(schema)
    try:
        item = REGISTRY[schema]().read(record, index)
    except (KeyError, TypeError, ValueError, AttributeError, SyntaxError) as error:
        raise DataError(f"malformed {schema} record ({error!r})", where=record.where) from error
    return None if item is None else PromptItem(record.where, item.question, item.gold, item.options)


def to_item(record: Record, schema: str, index: int = 0) -> PromptItem | None:
    """The record as a prompt, in `schema`: auto, orz, prompt_answer, or a text benchmark's name."""
    if schema not in (*SCHEMAS, "auto"):
        return _benchmark_item(record, schema, index)
    found = detect_schema(record.fields) if schema == "auto" else schema
    if found not in SCHEMAS:
        raise DataError(
            f"cannot tell the record's schema (fields: {sorted(record.fields)[:8]})",
            where=record.where,
            fix="use Orz-Math pairs or {prompt|question|problem, answer[, options]}, or set data.schema "
            "(orz, prompt_answer, or a text benchmark's name such as medqa or medmcqa)",
        )
    item = _orz(record) if found == "orz" else _prompt_answer(record)
    check_question(item.options, item.answer, record.where)  # without options, the math reward judges
    return item


def _records(source: str, split: str, schema: str) -> Iterator[Record | DataError]:
    """The records, through the benchmark's screen when a benchmark's reader reads them (MedMCQA refuses
    a file of the other `cop` layout as a whole)."""
    from xr_nemo.tasks.benchmarks import REGISTRY

    records = read_records(source, split)
    return REGISTRY[schema]().screen(records) if schema in REGISTRY else records


def load_prompts(
    source: str,
    split: str,
    tokenizer,
    *,
    schema: str = "auto",
    system_prompt: str | None = None,
    template: str = "paper",
    max_prompt_length: int = 1024,
    on_error: str = "raise",
    max_samples: int | None = None,
) -> PromptSet:
    """Read, validate and tokenise every prompt — the paper's training template as the user turn
    (`template="none"`: the question as it is), after `system_prompt` when one is given (the paper has
    none); too-long prompts are dropped and counted."""
    prompts = PromptSet([], [])
    for index, record in enumerate(_records(source, split, schema)):
        if max_samples is not None and len(prompts) >= max_samples:
            break
        try:
            if isinstance(record, DataError):
                raise record
            item = to_item(record, schema, index)
        except DataError as error:
            if on_error != "skip" and not isinstance(error, UnreadableGold):
                raise DataError(
                    error.what, where=error.where, fix="fix or remove the record, or set data.on_error=skip"
                ) from None
            prompts.skipped.append(f"{error.where}: {error.what}")
            continue
        if item is None:
            continue
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        question = (
            training_prompt(item.question, item.options)
            if template == "paper"
            else with_options(item.question, item.options)
        )
        messages.append({"role": "user", "content": question})
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if len(ids) > max_prompt_length:
            prompts.too_long += 1
            continue
        prompts.items.append(item)
        prompts.token_ids.append(ids)
    if not prompts.items:
        raise DataError(
            "no usable prompts",
            where=source,
            fix=f"check the data (skipped {len(prompts.skipped)}, too long {prompts.too_long})",
        )
    return prompts
