"""The benchmark registry. A benchmark knows where its data live (hub id, config, split — or a local
file given on the command line), how to read one record of its schema into an `EvalItem`, and whether
it is multiple choice or free-form math. Adding one is a small class with `@register`.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xr_nemo.data.records import DataError, Record, read_records
from xr_nemo.errors import ConfigError


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    gold: str  # the option letter (multiple choice) or the answer (math)
    options: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. a subject, for per-subset accuracy


class Benchmark:
    name: ClassVar[str]
    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    split: ClassVar[str] = "test"
    kind: ClassVar[str]  # choice | math

    def item(self, record: Record, index: int) -> EvalItem:
        raise NotImplementedError

    def items(self, source: str | None) -> Iterator[EvalItem | DataError]:
        """Every record as an item, or the error that makes it unusable (with file:line)."""
        location = source or (f"{self.hub_id}:{self.hub_config}" if self.hub_config else self.hub_id)
        for index, record in enumerate(read_records(location, self.split)):
            if isinstance(record, DataError):
                yield record
                continue
            try:
                yield self.item(record, index)
            except DataError as error:
                yield error
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                yield DataError(f"malformed {self.name} record ({error!r})", where=record.where)


REGISTRY: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    REGISTRY[cls.name] = cls
    return cls


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown benchmark {name!r}",
            where="--benchmarks",
            fix=f"choose from {', '.join(sorted(REGISTRY))}",
        )
    return REGISTRY[name]()


def _text(value: Any, what: str, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what} is missing or empty", where=where, fix="drop or fix the record")
    return value.strip()


def _lettered(options: list[Any], where: str) -> dict[str, str]:
    if not isinstance(options, list) or not options:
        raise DataError("options must be a non-empty list", where=where)
    return {
        letter: _text(text, f"option {letter}", where)
        for letter, text in zip(string.ascii_uppercase, options, strict=False)
    }


@register
class GSM8K(Benchmark):
    name = "gsm8k"
    hub_id, hub_config, kind = "openai/gsm8k", "main", "math"

    def item(self, record: Record, index: int) -> EvalItem:
        solution = _text(record.fields.get("answer"), "'answer'", record.where)
        if "####" not in solution:
            raise DataError("'answer' has no '#### <final answer>' line", where=record.where)
        gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
        return EvalItem(
            f"gsm8k-{index}", _text(record.fields.get("question"), "'question'", record.where), gold
        )


@register
class MedQA(Benchmark):
    """USMLE questions with 4 or 5 options: `{question, options: {A: …}, answer_idx}`."""

    name = "medqa"
    hub_id, split, kind = "GBaker/MedQA-USMLE-4-options", "test", "choice"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = fields.get("options")
        if isinstance(options, list):
            options = _lettered(options, where)
        if not isinstance(options, dict) or not options:
            raise DataError("'options' must be an object of letter → text", where=where)
        options = {str(k).strip().upper(): _text(v, f"option {k}", where) for k, v in options.items()}
        gold = _text(fields.get("answer_idx"), "'answer_idx'", where).upper()
        if gold not in options:
            raise DataError(f"answer_idx {gold!r} is not one of the options {sorted(options)}", where=where)
        return EvalItem(f"medqa-{index}", _text(fields.get("question"), "'question'", where), gold, options)


@register
class MMLUPro(Benchmark):
    """`{question_id, question, options: [...], answer: letter, category}`; `mmlu_pro_health` keeps the
    health category, as the paper's MMLU-Pro-Health."""

    name = "mmlu_pro"
    hub_id, split, kind = "TIGER-Lab/MMLU-Pro", "test", "choice"
    category: ClassVar[str | None] = None

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = _lettered(fields.get("options"), where)
        gold = _text(fields.get("answer"), "'answer'", where).upper()
        if gold not in options:
            raise DataError(f"answer {gold!r} is not one of the options", where=where)
        meta = {"category": str(fields.get("category", ""))}
        item_id = f"{self.name}-{fields.get('question_id', index)}"
        return EvalItem(item_id, _text(fields.get("question"), "'question'", where), gold, options, meta)

    def items(self, source: str | None) -> Iterator[EvalItem | DataError]:
        for item in super().items(source):
            if self.category is None or isinstance(item, DataError) or item.meta["category"] == self.category:
                yield item


@register
class MMLUProHealth(MMLUPro):
    name, category = "mmlu_pro_health", "health"


@register
class MedMCQA(Benchmark):
    """`{question, opa, opb, opc, opd, cop (0-based index of the correct option), subject_name}`; the
    validation split, since the test split has no answers."""

    name = "medmcqa"
    hub_id, split, kind = "openlifescienceai/medmcqa", "validation", "choice"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = _lettered([fields.get(key) for key in ("opa", "opb", "opc", "opd")], where)
        correct = fields.get("cop")
        if not isinstance(correct, int) or not 0 <= correct < len(options):
            raise DataError(
                f"'cop' must be an option index 0-{len(options) - 1}, got {correct!r}", where=where
            )
        meta = {"subject": str(fields.get("subject_name", ""))}
        item_id = f"medmcqa-{fields.get('id', index)}"
        return EvalItem(
            item_id, _text(fields.get("question"), "'question'", where), "ABCD"[correct], options, meta
        )


@register
class PubMedQA(Benchmark):
    """PQA-L: `{question, context: {contexts: [...]}, final_decision: yes|no|maybe}`, asked with the
    abstract's context as a three-way multiple choice."""

    name = "pubmedqa"
    hub_id, hub_config, split, kind = "qiaojin/PubMedQA", "pqa_labeled", "train", "choice"
    OPTIONS: ClassVar[dict[str, str]] = {"A": "yes", "B": "no", "C": "maybe"}

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        decision = _text(fields.get("final_decision"), "'final_decision'", where).lower()
        gold = next((letter for letter, text in self.OPTIONS.items() if text == decision), None)
        if gold is None:
            raise DataError(f"final_decision {decision!r} is not yes, no or maybe", where=where)
        context = fields.get("context") or {}
        passages = context.get("contexts", []) if isinstance(context, dict) else []
        question = _text(fields.get("question"), "'question'", where)
        if passages:
            question = "Context: " + " ".join(str(p) for p in passages) + f"\n\n{question}"
        return EvalItem(f"pubmedqa-{fields.get('pubid', index)}", question, gold, dict(self.OPTIONS))
