"""Image benchmarks: general multimodal reasoning (MMMU, MMMU-Pro, MMStar, MathVista, MathVision) and
medical (MedXpertQA, OmniMedVQA, NEJM Image Challenge, VQA-RAD, SLAKE, PMC-VQA).

Each reads its release's own schema; a record's images may be PIL images (hub), `{bytes, path}` dicts
(Parquet) or file names relative to the data file (see `xr_nemo.tasks.images`).
"""

from __future__ import annotations

import ast
import random
import re
import string
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from xr_nemo.data.records import DataError, Record, parse_json
from xr_nemo.tasks.benchmark import (
    Benchmark,
    EvalItem,
    gold_letter,
    image_list,
    lettered,
    option_list,
    record_images,
    register,
    text,
)
from xr_nemo.tasks.images import IMAGE_FOLDERS, ImageSource

IMAGE_FIELDS = [f"image_{k}" for k in range(1, 8)]  # MMMU and MMMU-Pro: up to seven per question
HEALTH_SUBJECTS = frozenset(  # MMMU's Health & Medicine discipline: the paper's MMMU-Health subset
    {
        "basic_medical_science",
        "clinical_medicine",
        "diagnostics_and_laboratory_medicine",
        "pharmacy",
        "public_health",
    }
)
MMMU_SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory",
    "Basic_Medical_Science", "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
    "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math",
    "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)  # fmt: skip


def _subject_key(subject: str) -> str:
    return "_".join(subject.strip().lower().replace("&", "and").split())


def _health_filter(self, item: EvalItem) -> bool:
    """MMMU and MMMU-Pro's `keep`: their health subsets keep the Health & Medicine subjects."""
    return not self.health_only or _subject_key(item.meta["subject"]) in HEALTH_SUBJECTS


def answer_list(value: Any, where: str) -> list[str]:
    """A gold as the list of its accepted answers: MMMU writes several as the string form of a Python
    list of strings (`"['24/7', '3.429']"`), read as a literal; anything else is one answer (so an
    interval such as `"[0, 1]"` stays one answer)."""
    if isinstance(value, list):
        return [text(v, "an answer", where) for v in value]
    answer = text(value, "'answer'", where)
    if answer.startswith("[") and answer.endswith("]"):
        try:
            parsed = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(v, str) for v in parsed):
            return [text(v, "an answer", where) for v in parsed]
    return [answer]


@register
class MMMU(Benchmark):
    """`{id, question, options: "['…', …]", answer, question_type, image_1…image_7}`, one hub config per
    subject (a local copy of the hub is read for its `validation-*.parquet`, never `dev`/`test`). Open
    questions (`question_type: open`) are judged as free-form math. meta: `subject`, `question_type`,
    and `golds` (every accepted answer, a list) for open questions and multiple-answer ones; `gold` is
    the first."""

    name = "mmmu"
    hub_id, hub_configs, split = "MMMU/MMMU", MMMU_SUBJECTS, "validation"
    modality, free_form = "image", "mmmu"
    official_guess_seed = 42  # MMMU's eval_utils seeds Python's random with 42
    health_only: ClassVar[bool] = False

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        item_id = text(fields.get("id"), "'id'", where)
        subject = re.sub(r"^(validation|dev|test)_|_\d+$", "", item_id)
        question = text(fields.get("question"), "'question'", where)
        images = record_images(record, IMAGE_FIELDS)
        kind = str(fields.get("question_type") or "multiple-choice")
        meta: dict[str, Any] = {"subject": subject, "question_type": kind}
        golds = answer_list(fields.get("answer"), where)
        if kind == "open":
            meta["golds"] = golds
            return EvalItem(item_id, question, golds[0], None, meta, images)
        options = lettered(option_list(fields.get("options"), where), where)
        letters = [gold_letter(gold, options, where) for gold in golds]
        if len(letters) > 1:
            meta["golds"] = letters
        return EvalItem(item_id, question, letters[0], options, meta, images)

    keep = _health_filter


@register
class MMMUHealth(MMMU):
    name, health_only = "mmmu_health", True
    hub_configs = tuple(s for s in MMMU_SUBJECTS if _subject_key(s) in HEALTH_SUBJECTS)


@register
class MMMUPro(Benchmark):
    """The standard setting with ten options: `{id, question, options, answer, subject, image_1…}`."""

    name = "mmmu_pro"
    hub_id, hub_configs = "MMMU/MMMU_Pro", ("standard (10 options)",)
    modality = "image"
    official_guess_seed = 42  # ours: MMMU-Pro's evaluate.py guesses unseeded; we seed as MMMU does
    health_only: ClassVar[bool] = False

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = lettered(option_list(fields.get("options"), where), where)
        return EvalItem(
            text(fields.get("id"), "'id'", where),
            text(fields.get("question"), "'question'", where),
            gold_letter(fields.get("answer"), options, where),
            options,
            {"subject": str(fields.get("subject", ""))},
            record_images(record, IMAGE_FIELDS),
        )

    keep = _health_filter


@register
class MMMUProHealth(MMMUPro):
    name, health_only = "mmmu_pro_health", True


_MMSTAR_OPTIONS = re.compile(r"\n?\s*Options:\s*(.*)\Z", re.DOTALL)
_MMSTAR_LETTER = re.compile(r"(?:^|,\s*|\n\s*)([A-F]):\s*")  # options may contain commas


@register
class MMStar(Benchmark):
    """`{index, question, image, answer, category}`; the options are inside the question
    ("…\\nOptions: A: x, B: y, C: z, D: w") and are split out here."""

    name = "mmstar"
    hub_id, split = "Lin-Chen/MMStar", "val"
    modality = "image"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        question = text(fields.get("question"), "'question'", where)
        found = _MMSTAR_OPTIONS.search(question)
        parts = _MMSTAR_LETTER.split(found.group(1)) if found else []
        if len(parts) < 5:  # "", A, text, B, text at the least
            raise DataError("the question has no 'Options: A: …, B: …' list", where=where)
        options = {parts[i]: parts[i + 1].strip().rstrip(",").strip() for i in range(1, len(parts) - 1, 2)}
        gold = gold_letter(fields.get("answer"), options, where)
        meta = {"category": str(fields.get("category", ""))}
        item_id = f"mmstar-{fields.get('index', index)}"
        stem = question[: found.start()].strip()
        return EvalItem(item_id, stem, gold, options, meta, record_images(record, ["image"]))


@lru_cache(maxsize=8)
def _queries(path: Path) -> dict[str, Any]:
    """MathVista's `query.json` (pid → the official zero-shot prompt), {} when absent or unreadable."""
    try:
        queries = parse_json(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}
    return queries if isinstance(queries, dict) else {}


@register
class MathVista(Benchmark):
    """testmini, as the hub's Parquet (`{pid, question, decoded_image, image, choices, answer,
    question_type, answer_type, precision, unit, query}`) or the official repository's `testmini.json`
    (pid → the same without `decoded_image`/`query`; the query is then looked up in `query.json` beside
    it). Multiple choice answers are the option's text; free-form ones are numbers. meta: `query` (the
    official prompt with its precision hint; None when neither the record nor `query.json` has it),
    `precision`, `answer_type`, `question_type`, `unit`."""

    name = "mathvista"
    hub_id, split = "AI4Math/MathVista", "testmini"
    modality, free_form, nearest_option = "image", "mathvista", "edit_distance"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        question = text(fields.get("question"), "'question'", where)
        if fields.get("unit"):
            question += f" (Unit: {fields['unit']})"
        images = record_images(record, ["decoded_image", "image"], first=True)  # decoded when given
        pid = fields.get("pid", index)
        item_id = f"mathvista-{pid}"
        query = fields.get("query")
        if query is None and isinstance(record.origin, Path):
            query = _queries(record.origin.parent / "query.json").get(str(pid))
        precision = fields.get("precision")
        if isinstance(precision, float) and precision.is_integer():
            precision = int(precision)  # Parquet stores the column as float
        meta = {
            "question_type": str(fields.get("question_type", "")),
            "answer_type": str(fields.get("answer_type", "")),
            "precision": precision,
            "unit": fields.get("unit") or None,
            "query": query if isinstance(query, str) else None,
        }
        if isinstance(query, str) and query.strip():
            # the official prompt, with its hint on the answer's form and precision; for multiple choice
            # without its "Choices:" block, which our multiple-choice template lays out (ours)
            question = query.split("\nChoices:")[0].strip()
        if fields.get("question_type") == "multi_choice" or fields.get("choices"):
            options = lettered(option_list(fields.get("choices"), where), where)
            gold = gold_letter(fields.get("answer"), options, where)
            return EvalItem(item_id, question, gold, options, meta, images)
        return EvalItem(item_id, question, text(fields.get("answer"), "'answer'", where), None, meta, images)


_MATHV_NOISE = re.compile(r"\$|\s|\\!|\\,|\^\{?\\circ\}?|°|\\?%")
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def mathvision_same(answer: str, gold: str) -> bool:
    """The two tests of MATH-V's official `is_equal` (its `evaluation/utils.py`) that need no LaTeX
    evaluation: the same text ignoring case, or numbers that agree at two decimals (`round(x, 2)`, so
    3.1416 is right for 3.14), after the official clean-up of `$`, spaces, degrees and percent signs.
    Expressions are left to math-verify (ours, in place of the official latex2sympy evaluation)."""
    said, wanted = (_MATHV_NOISE.sub("", text).lower().rstrip(".") for text in (answer, gold))
    if not said or not wanted:
        return False
    if said == wanted:
        return True
    if _DECIMAL.fullmatch(said) and _DECIMAL.fullmatch(wanted):
        return round(float(said), 2) == round(float(wanted), 2)
    return False


@register
class MathVision(Benchmark):
    """`{id, question, options: [...] (empty for free form), decoded_image | image, answer, subject}`;
    multiple-choice answers are letters. Scored as MATH-V's `evaluation/evaluate.py`: a choice is the
    option's letter or its text; a free-form answer is right by `mathvision_same` or math-verify."""

    name = "mathvision"
    hub_id, split = "MathLLMs/MathVision", "test"
    modality, free_form = "image", "mathvision"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        question = text(fields.get("question"), "'question'", where)
        images = record_images(record, ["decoded_image", "image"], first=True)  # decoded when given
        meta = {"subject": str(fields.get("subject", "")), "level": fields.get("level")}
        item_id = f"mathvision-{fields.get('id', index)}"
        choices = option_list(fields.get("options") or [], where)
        if choices:
            options = lettered(choices, where)
            return EvalItem(
                item_id, question, gold_letter(fields.get("answer"), options, where), options, meta, images
            )
        return EvalItem(item_id, question, text(fields.get("answer"), "'answer'", where), None, meta, images)


_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:.*\Z", re.DOTALL)


@register
class MedXpertQAText(Benchmark):
    """`{id, question, options: {A: …}, label, images: [file names], medical_task, body_system}`; the
    question repeats the options after "Answer Choices:", which is cut (the prompt lists them)."""

    name = "medxpertqa_text"
    hub_id, hub_configs = "TsinghuaC3I/MedXpertQA", ("Text",)

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        raw = fields.get("options")
        if not isinstance(raw, dict) or not raw:
            raise DataError("'options' must be an object of letter → text", where=where)
        options = {str(k).upper(): text(v, f"option {k}", where) for k, v in raw.items() if v is not None}
        gold = gold_letter(fields.get("label"), options, where)
        question = _ANSWER_CHOICES.sub("", text(fields.get("question"), "'question'", where))
        meta = {
            "task": str(fields.get("medical_task", "")),
            "body_system": str(fields.get("body_system", "")),
        }
        images = self.images(record)
        return EvalItem(f"medxpertqa-{fields.get('id', index)}", question, gold, options, meta, images)

    def images(self, record: Record) -> tuple[ImageSource, ...]:
        return ()


@register
class MedXpertQAMM(MedXpertQAText):
    """The multimodal subset; its images ship as `images/` next to the data file."""

    name, hub_configs, modality = "medxpertqa_mm", ("MM",), "image"

    def images(self, record: Record) -> tuple[ImageSource, ...]:
        names = record.fields.get("images") or []
        return image_list(record, [names] if isinstance(names, str) else list(names))


def stratified_order(groups: dict[str, list[Record]], seed: str) -> list[Record]:
    """The records of all groups in an order whose every prefix is a stratified sample: each group is
    shuffled with its own seed (`<seed>/<group>`, so one group's order does not depend on the others),
    and its j-th record of n is placed at (j + 1/2) / n, ties by group name. The first N are then about
    N·n/total of each group (proportional allocation), whatever N is."""
    keyed = []
    for name in sorted(groups):
        members = list(groups[name])
        random.Random(f"{seed}/{name}").shuffle(members)
        n = len(members)
        keyed += [(Fraction(2 * j + 1, 2 * n), name, j, record) for j, record in enumerate(members)]
    keyed.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in keyed]


@register
class OmniMedVQA(Benchmark):
    """Local files only (`QA_information/*/*.json`): `{question_id, question, option_A…option_D,
    gt_answer (the option's text), image_path, modality_type, dataset}`; `image_path` is relative to the
    release's root folder. Items come in a stratified order (`stratified_order`, by `dataset`, seed
    "omnimedvqa"), so `limit=1000` is a reproducible sample of every source dataset in proportion."""

    name = "omnimedvqa"
    hub_id = None
    modality, nearest_option = "image", "similarity"
    SEED: ClassVar[str] = "omnimedvqa"

    def _records(self, source: str | None) -> Iterator[Record | DataError]:
        groups: dict[str, list[Record]] = {}
        for record in super()._records(source):
            if isinstance(record, DataError):
                yield record
                continue
            dataset = record.fields.get("dataset")
            if not isinstance(dataset, str) or not dataset.strip():  # the file is named for it
                dataset = record.origin.stem if isinstance(record.origin, Path) else ""
            groups.setdefault(dataset.strip(), []).append(record)
        yield from stratified_order(groups, self.SEED)

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = {
            letter: text(fields[f"option_{letter}"], f"option_{letter}", where)
            for letter in string.ascii_uppercase[:6]
            if fields.get(f"option_{letter}") not in (None, "")
        }
        if not options:
            raise DataError("no option_A… fields", where=where)
        gold = gold_letter(fields.get("gt_answer"), options, where)
        modality = fields.get("modality_type") or fields.get("modality") or ""  # both names occur
        meta = {"modality": str(modality), "dataset": str(fields.get("dataset", ""))}
        item_id = f"omnimedvqa-{fields.get('question_id', index)}"
        question = text(fields.get("question"), "'question'", where)
        return EvalItem(item_id, question, gold, options, meta, record_images(record, ["image_path"]))


@register
class NEJMImageChallenge(Benchmark):
    """Local files only. The community release's JSON (`image_id`, `question`, `option_A…option_E`,
    `correct_answer`) with its images saved as `images/<image_id>.jpg`, or records with `id`, `options`
    (letter → text or a list), `answer` (letter or option text) and `image`/`image_path`."""

    name = "nejm"
    hub_id = None
    modality = "image"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        raw = fields.get("options")
        if isinstance(raw, dict) and raw:
            options = {str(k).upper(): text(v, f"option {k}", where) for k, v in raw.items()}
        elif raw:
            options = lettered(option_list(raw, where), where)
        else:
            options = {
                letter: text(fields[f"option_{letter}"], f"option_{letter}", where)
                for letter in "ABCDE"
                if fields.get(f"option_{letter}") not in (None, "")
            }
        if not options:
            raise DataError("no options (an 'options' field or option_A…option_E)", where=where)
        gold = gold_letter(fields.get("answer", fields.get("correct_answer")), options, where)
        question = text(fields.get("question"), "'question'", where)
        item_id = fields.get("id", fields.get("image_id", index))
        images = record_images(record, ["image", "image_path"], required=False)
        if not images:  # the release names images only by id
            images = image_list(record, [f"{item_id}.jpg"])
        return EvalItem(f"nejm-{item_id}", question, gold, options, {}, images[:1])


_WORDS = re.compile(r"[a-z0-9]+")


def closed_question(question: str, answer: str) -> bool:
    """Ours, for layouts without the release's `answer_type`: a yes/no answer, or an "A or B?" question
    answered by one of its alternatives — the answer's words stand together in a question that offers
    a choice with "or" ("Is the lesion on the left or right side?" → "Right side"). On VQA-RAD's release
    it agrees with `answer_type` on 450 of the 451 test questions (docs/eval.md)."""
    said = _WORDS.findall(answer.lower())
    if said in (["yes"], ["no"]):
        return True
    asked = _WORDS.findall(question.lower())
    width = len(said)
    return (
        "or" in asked
        and width > 0
        and any(asked[start : start + width] == said for start in range(len(asked) - width + 1))
    )


class _ShortAnswerVQA(Benchmark):
    """Medical VQA with short free-text answers, judged by normalised exact match. Like the published
    evaluations of reasoning VLMs, only closed questions are kept: the release's `answer_type`
    (CLOSED/OPEN) when the record has one, else `closed_question` (ours, for layouts without it). Open
    ones are scored by exact match too when `closed_only` is off. meta: `answer_type` ("closed"/"open")
    and `answer_type_from` ("release" or "closed-question rule")."""

    free_form, modality = "short", "image"
    image_fields: ClassVar[tuple[str, ...]] = ("image",)
    closed_only: ClassVar[bool] = True

    def keep(self, item: EvalItem) -> bool:
        return not self.closed_only or item.meta["answer_type"] == "closed"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        gold = text(fields.get("answer"), "'answer'", where)
        question = text(fields.get("question"), "'question'", where)
        given = fields.get("answer_type")
        if given in (None, ""):
            kind = "closed" if closed_question(question, gold) else "open"
            source = "closed-question rule"
        else:
            kind, source = str(given).strip().lower(), "release"
            if kind not in ("closed", "open"):
                raise DataError(f"answer_type {given!r} is neither CLOSED nor OPEN", where=where)
        item_id = f"{self.name}-{fields.get('qid', index)}"
        images = record_images(record, list(self.image_fields), first=True, folders=self.image_folders)
        meta = {"answer_type": kind, "answer_type_from": source}
        return EvalItem(item_id, question, gold, None, meta, images)


@register
class VQARAD(_ShortAnswerVQA):
    """The hub's test split (`{image, question, answer}`, no answer type), or the original release's
    `VQA_RAD Dataset Public.json` (a list of `{qid, image_name, question, answer, answer_type,
    phrase_type, …}`, images in `VQA_RAD Image Folder/`), whose test set is the questions with a
    `test_freeform`/`test_para` phrase type (451)."""

    name = "vqa_rad"
    hub_id = "flaviagiammarino/vqa-rad"
    image_fields = ("image", "image_name")
    image_folders = (*IMAGE_FOLDERS, "VQA_RAD Image Folder")

    def _records(self, source: str | None) -> Iterator[Record | DataError]:
        for record in super()._records(source):
            phrase = record.fields.get("phrase_type") if isinstance(record, Record) else None
            if isinstance(phrase, str) and phrase.startswith("test") != (self.split == "test"):
                continue  # the original release holds both splits in one file
            yield record


@register
class SLAKE(_ShortAnswerVQA):
    """`{qid, img_name, question, answer, answer_type, q_lang}`, images in `imgs/`; English only. The hub
    rows name images without their bytes (they ship in `imgs.zip`): pass the release's folder
    (`train.json`, `validate.json`, `test.json`, `imgs/`) as `+data.slake=`. meta adds `language`."""

    name = "slake"
    hub_id, image_fields = "BoKelvin/SLAKE", ("img_name",)

    def item(self, record: Record, index: int) -> EvalItem:
        item = super().item(record, index)
        item.meta["language"] = str(record.fields.get("q_lang", "en"))
        return item

    def keep(self, item: EvalItem) -> bool:
        return item.meta["language"] == "en" and super().keep(item)


@register
class PMCVQA(Benchmark):
    """`test.csv`/`test_2.csv`: `Figure_path, Question, Choice A … Choice D` (read "A:text"), and the
    gold as `Answer_label` (a letter) or `Answer` (a letter, "B:text" or the text); images in `images/`
    or `figures/` next to the file."""

    name = "pmc_vqa"
    hub_id = "xmcmic/PMC-VQA"
    modality = "image"

    def item(self, record: Record, index: int) -> EvalItem:
        fields, where = record.fields, record.where
        options = {}
        for letter in "ABCD":
            choice = text(fields.get(f"Choice {letter}"), f"'Choice {letter}'", where)
            options[letter] = re.sub(rf"^\s*{letter}\s*[:.]\s*", "", choice).strip()
        answer = fields.get("Answer_label") or fields.get("Answer")
        if isinstance(answer, str) and re.match(r"^\s*[A-D]\s*:", answer):
            answer = answer.strip()[0]
        gold = gold_letter(answer, options, where)
        question = text(fields.get("Question"), "'Question'", where)
        images = record_images(record, ["Figure_path"])
        return EvalItem(f"pmc_vqa-{index}", question, gold, options, {}, images)
