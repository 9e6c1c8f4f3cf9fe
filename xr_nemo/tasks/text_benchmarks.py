"""Text benchmarks: grade-school math, MedQA, MMLU-Pro (and its health category), MedMCQA, PubMedQA."""

from __future__ import annotations

from typing import ClassVar

from xr_nemo.data.records import DataError, Record
from xr_nemo.tasks.benchmark import Benchmark, EvalItem, lettered, register, text


@register
class GSM8K(Benchmark):
    name = "gsm8k"
    hub_id, hub_configs = "openai/gsm8k", ("main",)

    def item(self, record: Record, index: int) -> EvalItem:
        solution = text(record.fields.get("answer"), "'answer'", record.where)
        if "####" not in solution:
            raise DataError("'answer' has no '#### <final answer>' line", where=record.where)
        gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
        return EvalItem(
            f"gsm8k-{index}", text(record.fields.get("question"), "'question'", record.where), gold
        )


@register
class MedQA(Benchmark):
    """USMLE questions, 4 options: `{question, options, answer_idx}`, the options as `{A: …}`, a list of
    texts, or BigBio's list of `{key, value}`."""

    name = "medqa"
    hub_id = "GBaker/MedQA-USMLE-4-options"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = fields.get("options")
        if isinstance(options, list) and all(isinstance(o, dict) and "key" in o for o in options):
            options = {o["key"]: o.get("value") for o in options}
        elif isinstance(options, list):
            options = lettered(options, where)
        if not isinstance(options, dict) or not options:
            raise DataError("'options' must be an object of letter → text", where=where)
        options = {str(k).strip().upper(): text(v, f"option {k}", where) for k, v in options.items()}
        gold = text(fields.get("answer_idx"), "'answer_idx'", where).upper()
        if gold not in options:
            raise DataError(f"answer_idx {gold!r} is not one of the options {sorted(options)}", where=where)
        question = text(fields.get("question"), "'question'", where)
        return EvalItem(f"{self.name}-{index}", question, gold, options)


@register
class MedQA5(MedQA):
    """The 5-option USMLE test set (the original release, as BigBio's `med_qa_en_source`)."""

    name = "medqa_5op"
    hub_id, hub_configs = "bigbio/med_qa", ("med_qa_en_source",)


@register
class MMLUPro(Benchmark):
    """`{question_id, question, options: [...], answer: letter, category}`; `mmlu_pro_health` keeps the
    health category, as the paper's MMLU-Pro-Health."""

    name = "mmlu_pro"
    hub_id = "TIGER-Lab/MMLU-Pro"
    category: ClassVar[str | None] = None

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = lettered(fields.get("options"), where)
        gold = text(fields.get("answer"), "'answer'", where).upper()
        if gold not in options:
            raise DataError(f"answer {gold!r} is not one of the options", where=where)
        meta = {"category": str(fields.get("category", ""))}
        item_id = f"{self.name}-{fields.get('question_id', index)}"
        return EvalItem(item_id, text(fields.get("question"), "'question'", where), gold, options, meta)

    def keep(self, item: EvalItem) -> bool:
        return self.category is None or item.meta["category"] == self.category


@register
class MMLUProHealth(MMLUPro):
    name, category = "mmlu_pro_health", "health"


@register
class MedMCQA(Benchmark):
    """`{question, opa, opb, opc, opd, cop (0-based index of the correct option), subject_name}`; the
    validation split, since the test split has no answers."""

    name = "medmcqa"
    hub_id, split = "openlifescienceai/medmcqa", "validation"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = lettered([fields.get(key) for key in ("opa", "opb", "opc", "opd")], where)
        correct = fields.get("cop")
        if not isinstance(correct, int) or not 0 <= correct < len(options):
            raise DataError(
                f"'cop' must be an option index 0-{len(options) - 1}, got {correct!r}", where=where
            )
        meta = {"subject": str(fields.get("subject_name", ""))}
        item_id = f"medmcqa-{fields.get('id', index)}"
        return EvalItem(
            item_id, text(fields.get("question"), "'question'", where), "ABCD"[correct], options, meta
        )


@register
class PubMedQA(Benchmark):
    """PQA-L: `{question, context: {contexts: [...]}, final_decision: yes|no|maybe}`, asked with the
    abstract's context as a three-way multiple choice."""

    name = "pubmedqa"
    hub_id, hub_configs, split = "qiaojin/PubMedQA", ("pqa_labeled",), "train"
    OPTIONS: ClassVar[dict[str, str]] = {"A": "yes", "B": "no", "C": "maybe"}

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        decision = text(fields.get("final_decision"), "'final_decision'", where).lower()
        gold = next((letter for letter, text in self.OPTIONS.items() if text == decision), None)
        if gold is None:
            raise DataError(f"final_decision {decision!r} is not yes, no or maybe", where=where)
        context = fields.get("context") or {}
        passages = context.get("contexts", []) if isinstance(context, dict) else []
        question = text(fields.get("question"), "'question'", where)
        if passages:
            question = "Context: " + " ".join(str(p) for p in passages) + f"\n\n{question}"
        return EvalItem(f"pubmedqa-{fields.get('pubid', index)}", question, gold, dict(self.OPTIONS))
