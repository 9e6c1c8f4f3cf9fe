"""Text benchmarks: grade-school math, MedQA, MMLU-Pro (and its health category), MedMCQA, PubMedQA."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from xr_nemo.data.records import DataError, Record, parse_json
from xr_nemo.errors import ConfigError
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
    official_guess_seed = 12345  # MMLU-Pro's evaluation seeds Python's random with 12345
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
    """The hub layout (`openlifescienceai/medmcqa`, or a local copy of it): `{id, question, opa, opb, opc,
    opd, cop, subject_name}` with `cop` the 0-based index of the correct option (the hub's loading
    script stores the release's `cop - 1` as a ClassLabel a–d; its test split has -1, no answer). The
    validation split, since the test split has no answers. The original release counts from 1 and is
    `medmcqa_release`: a record alone cannot say which (1–3 are in both), so the name says which, and a
    source holding a value only the other layout has (4 here, 0 there) is refused as a whole — read
    under the wrong name, every other record would be one letter off."""

    name = "medmcqa"
    hub_id, split = "openlifescienceai/medmcqa", "validation"
    cop_base: ClassVar[int] = 0  # what `cop` counts from in this layout
    foreign_cop: ClassVar[int] = 4  # a value only the other layout has (the release's option D)
    other_name: ClassVar[str] = "medmcqa_release"
    other_layout: ClassVar[str] = "medmcqa_release (the original release, whose cop counts from 1)"

    def screen(self, records: Iterable[Record | DataError]) -> Iterator[Record | DataError]:
        records = list(records)
        clashes = [r for r in records if isinstance(r, Record) and self._foreign(r.fields.get("cop"))]
        if clashes:
            raise ConfigError(
                f"{len(clashes)} of {len(records)} records have cop {self.foreign_cop}, which only the other "
                f"layout has: this is {self.other_layout}, and read as {self.name} (cop counted from "
                f"{self.cop_base}) the rest would be one letter off",
                where=clashes[0].where,
                fix=f"read it as {self.other_name} (`--benchmarks {self.other_name}`, or "
                f"`data.schema={self.other_name}` for training)",
            )
        yield from records

    def _foreign(self, cop: Any) -> bool:
        value = _cop(cop)
        return isinstance(value, int) and not isinstance(value, bool) and value == self.foreign_cop

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = lettered([fields.get(key) for key in ("opa", "opb", "opc", "opd")], where)
        correct = _cop(fields.get("cop"))
        first, last = self.cop_base, self.cop_base + len(options) - 1
        if isinstance(correct, bool) or not isinstance(correct, int) or not first <= correct <= last:
            raise DataError(
                f"'cop' must be the correct option's number, {first}–{last} in the {self.name} layout "
                f"(counted from {self.cop_base}), got {correct!r}",
                where=where,
                fix=f"drop the record (the test split has no answers); if the whole file counts 'cop' "
                f"the other way, evaluate it as {self.other_layout}",
            )
        meta = {"subject": str(fields.get("subject_name", ""))}
        item_id = f"medmcqa-{fields.get('id', index)}"
        gold = "ABCD"[correct - self.cop_base]
        return EvalItem(item_id, text(fields.get("question"), "'question'", where), gold, options, meta)


def _cop(value: Any) -> Any:
    """`cop` as given, or as the integer a CSV copy spells."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


@register
class MedMCQARelease(MedMCQA):
    """The original release (`train.json`, `dev.json`, `test.json` from the authors' download: JSON lines
    in files named `.json`), whose `cop` counts from 1 (the official `dataset.py` trains on `cop - 1`).
    Local files only; a folder is read for `dev.json` (the validation split)."""

    name = "medmcqa_release"
    hub_id, cop_base, foreign_cop = None, 1, 0  # 0: the hub's option A
    other_name, other_layout = "medmcqa", "medmcqa (the hub layout, whose cop counts from 0)"


# The official PQA-L test set: `preprocess/split_dataset.py` of github.com/pubmedqa/pubmedqa splits the
# 1,000 labelled PMIDs of `ori_pqal.json` 500/500 with `random.seed(0)`; the second half is the test set
# its `data/test_ground_truth.json` lists. These are SHA-256 digests of the sorted ids ("\n"-joined), to
# recognise the full PQA-L and to check that the split was reproduced — not the ids themselves.
PQAL_IDS_SHA256 = "7a6c316c94747ae97a9f55b7d28908884db6bf7cf13fcce4b969943c9cb1cf94"
PQAL_TEST_IDS_SHA256 = "406e3b89eff577ed38571eca5a5819734a6f49ac0437d171b6c64e5c3cd195f8"
PQAL_DECISIONS = ("yes", "no", "maybe")


def ids_digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def pqal_test_ids(decisions: list[tuple[str, str]], seed: int = 0) -> list[str]:
    """The official split script's test half of `(pmid, final_decision)` pairs given in the order of
    `ori_pqal.json`: per label (yes, no, maybe) the PMIDs are shuffled and cut in two (the first half
    the larger); if the halves differ in size, one PMID drawn from the first moves to the second."""
    rng = random.Random(seed)
    halves: tuple[list[str], list[str]] = ([], [])
    for label in PQAL_DECISIONS:
        pmids = [pmid for pmid, decision in decisions if decision == label]
        rng.shuffle(pmids)
        cut = math.ceil(len(pmids) / 2)
        halves[0].extend(pmids[:cut])
        halves[1].extend(pmids[cut:])
    if len(halves[0]) != len(halves[1]):
        moved = rng.choice(halves[0])
        halves[0].remove(moved)
        halves[1].append(moved)
    return halves[1]


@register
class PubMedQA(Benchmark):
    """PQA-L, asked with the abstract's context as a three-way multiple choice, on the official 500-item
    test set. Reads the hub layout (`{pubid, question, context: {contexts}, final_decision}`) and the
    official repository's `data/ori_pqal.json` (PMID → `{QUESTION, CONTEXTS, final_decision}`). The test
    ids come from `test_ground_truth.json` beside the data file when it is there, else from the official
    split script re-run on the full 1,000 (checked against the official test set's digest); a file of
    the official 500 is read whole, and any other file is read as given."""

    name = "pubmedqa"
    hub_id, hub_configs, split = "qiaojin/PubMedQA", ("pqa_labeled",), "train"
    OPTIONS: ClassVar[dict[str, str]] = {"A": "yes", "B": "no", "C": "maybe"}
    GROUND_TRUTH: ClassVar[str] = "test_ground_truth.json"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        decision = text(fields.get("final_decision"), "'final_decision'", where).lower()
        gold = next((letter for letter, text in self.OPTIONS.items() if text == decision), None)
        if gold is None:
            raise DataError(f"final_decision {decision!r} is not yes, no or maybe", where=where)
        context = fields.get("context") or {}
        passages = context.get("contexts", []) if isinstance(context, dict) else []
        passages = fields.get("CONTEXTS") or passages  # the official ori_pqal.json
        question = text(fields.get("question", fields.get("QUESTION")), "'question'", where)
        if passages:
            question = "Context: " + " ".join(str(p) for p in passages) + f"\n\n{question}"
        return EvalItem(f"pubmedqa-{_pmid(fields, index)}", question, gold, dict(self.OPTIONS))

    def _records(self, source: str | None) -> Iterator[Record | DataError]:
        data, truth = _pubmedqa_files(source, self.GROUND_TRUTH)
        records: list[Record] = []
        for record in super()._records(data):
            if isinstance(record, DataError):
                yield record
            else:
                records.append(record)
        if truth is not None:
            yield from _select_by_ground_truth(records, truth)
            return
        ids = [_pmid(record.fields, None) or "" for record in records]
        if ids_digest(ids) != PQAL_IDS_SHA256:
            yield from records  # the official test set itself, or a file chosen as is
            return
        decisions = [
            (pmid, str(r.fields.get("final_decision", "")).strip().lower())
            for pmid, r in zip(ids, records, strict=True)
        ]
        test = set(pqal_test_ids(decisions))
        if ids_digest(test) != PQAL_TEST_IDS_SHA256:
            raise DataError(
                "these are PQA-L's 1,000 labelled questions, but not in the order of the official "
                "ori_pqal.json, so the official split script cannot be re-run to find the 500 test ids",
                where=data or f"{self.hub_id} ({self.hub_configs[0]})",
                fix="download data/ori_pqal.json and data/test_ground_truth.json from "
                "github.com/pubmedqa/pubmedqa and pass +data.pubmedqa=<that data folder>",
            )
        yield from (record for pmid, record in zip(ids, records, strict=True) if pmid in test)


def _pmid(fields: dict, default: int | None) -> str | None:
    value = fields.get("pubid", fields.get("id", default))
    return None if value is None else str(value).strip()


def _pubmedqa_files(source: str | None, ground_truth: str) -> tuple[str | None, Path | None]:
    """The data to read and the ground-truth file beside it: in a folder, the official `ori_pqal.json`
    (never the split script's outputs or `test_ground_truth.json` itself as data)."""
    if source is None:
        return None, None
    path = Path(source)
    if path.is_dir():
        for folder in (path, path / "data"):
            if (folder / "ori_pqal.json").is_file():
                path = folder / "ori_pqal.json"
                break
        else:
            truth = path / ground_truth
            return source, truth if truth.is_file() else None
    truth = path.parent / ground_truth
    return str(path), truth if truth.is_file() and truth != path else None


def _select_by_ground_truth(records: list[Record], truth_path: Path) -> Iterator[Record | DataError]:
    """The records whose PMIDs `test_ground_truth.json` lists (PMID → yes/no/maybe), in the data's order;
    a record whose decision differs from the ground truth's, and a listed PMID with no record, are
    errors."""
    where = str(truth_path)
    try:
        truth = parse_json(truth_path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read the test ids: {exc}", where=where) from None
    if not isinstance(truth, dict) or not truth:
        raise DataError("test_ground_truth.json must be an object of PMID → yes/no/maybe", where=where)
    seen = set()
    for record in records:
        pmid = _pmid(record.fields, None)
        if pmid not in truth:
            continue
        seen.add(pmid)
        decision = str(record.fields.get("final_decision", "")).strip().lower()
        if decision != str(truth[pmid]).strip().lower():
            yield DataError(
                f"final_decision {decision!r} differs from the ground truth's {truth[pmid]!r}",
                where=record.where,
                fix=f"check that {where} and the data are the same release",
            )
            continue
        yield record
    for pmid in truth:
        if pmid not in seen:
            yield DataError(f"test id {pmid} has no record in the data", where=f'{where} key "{pmid}"')
