"""What a benchmark is. It knows where its data live (hub id, configs, split — or a local file given on
the command line), how to read one record of its schema into an `EvalItem`, and how free-form answers
are judged. Items with options are multiple choice; items without are free-form `math` (math-verify)
or `short` answers (normalised exact match). Adding a benchmark is a small class with `@register`
(see docs/eval.md).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from xr_nemo.data.records import DataError, Record, read_records
from xr_nemo.errors import ConfigError
from xr_nemo.tasks.images import (
    IMAGE_FOLDERS,
    ImagesNotLocal,
    ImageSource,
    MissingImage,
    image_source,
    load_image,
)

# How items without options are judged: math-verify equivalence, a normalised short answer (lmms-eval's
# SLAKE scorer), MMMU's open-question rule, MathVista's typed normalisation (`xr_nemo.tasks.judges`), or
# MATH-V's rule (math-verify, or the same text or value as its `is_equal`: `image_benchmarks`).
FreeForm = Literal["math", "short", "mmmu", "mathvista", "mathvision", "exact"]
MATH_VERIFIED: tuple[FreeForm, ...] = ("math", "mathvision")  # golds math-verify must be able to read
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class UnreadableGold(DataError):
    """A math gold math-verify cannot read: every answer would be compared with it as a string."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    gold: str  # the option letter (multiple choice) or the answer (free form)
    options: dict[str, str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. a subject, for per-subset accuracy
    images: tuple[ImageSource, ...] = ()  # in the order the question refers to them
    where: str = ""  # the record's file:line, for messages about it


class Benchmark:
    name: ClassVar[str]
    hub_id: ClassVar[str | None]  # None: local files only (`data.<name>=PATH`)
    hub_configs: ClassVar[tuple[str | None, ...]] = (None,)
    split: ClassVar[str] = "test"
    free_form: ClassVar[FreeForm] = "math"  # how items without options are judged
    # an official scorer that takes the nearest option when no letter is read: by edit distance
    # (MathVista) or difflib's ratio (OmniMedVQA); None: an unread answer stays unanswered
    nearest_option: ClassVar[Literal["edit_distance", "similarity"] | None] = None
    # an official scorer that guesses a random option when it reads none, with this seed: the summary
    # then also reports that official-compatible score beside our strict one
    official_guess_seed: ClassVar[int | None] = None
    modality: ClassVar[Literal["text", "image"]] = "text"
    image_folders: ClassVar[tuple[str, ...]] = IMAGE_FOLDERS  # where relative image names are looked for

    def item(self, record: Record, index: int) -> EvalItem:
        raise NotImplementedError

    def keep(self, item: EvalItem) -> bool:
        """Whether the item belongs to this benchmark (subsets such as a health category filter here)."""
        return True

    def screen(self, records: Iterable[Record | DataError]) -> Iterator[Record | DataError]:
        """The records of one source as read, for a benchmark to refuse a whole source by what its
        records show together (MedMCQA's `cop` convention); training reads its records through it too."""
        yield from records

    def read(self, record: Record, index: int) -> EvalItem | None:
        """The record as a checked item (`check_question`), or None when it is outside the benchmark's
        subset. Evaluation, distillation and GRPO prompts read benchmark records through here."""
        item = self.item(record, index)
        if not self.keep(item):
            return None
        check_question(item.options, item.gold if self.free_form in MATH_VERIFIED else None, record.where)
        return item

    def _records(self, source: str | None) -> Iterator[Record | DataError]:
        if source is not None:
            yield from self.screen(read_records(source, self.split))
            return
        if self.hub_id is None:
            raise ConfigError(
                f"{self.name} is distributed as local files only",
                where=f"data.{self.name}",
                fix=f"download it and pass +data.{self.name}=PATH (see docs/eval.md)",
            )
        for config in self.hub_configs:
            yield from self.screen(read_records(self.hub_id, self.split, config))

    def items(self, source: str | None) -> Iterator[EvalItem | DataError]:
        """Every record as an item whose images decode, or the error that makes it unusable (file:line).
        Hub rows whose images are only file names stop the benchmark with one error (`ConfigError`)."""
        for index, record in enumerate(self._records(source)):
            if isinstance(record, DataError):
                yield record
                continue
            try:
                item = self.read(record, index)
            except ImagesNotLocal as error:
                raise ConfigError(
                    f"{self.name}: {error.what}",
                    where=f"{error.where} (data.{self.name})",
                    fix=f"download {self.name} with its images and pass +data.{self.name}=<the local folder "
                    "holding its data file and images> (see docs/eval.md)",
                ) from None
            except DataError as error:
                yield error
                continue
            except (KeyError, TypeError, ValueError, AttributeError, SyntaxError) as error:
                yield DataError(f"malformed {self.name} record ({error!r})", where=record.where)
                continue
            if item is None:
                continue
            try:
                for image in item.images:
                    load_image(image, record.where)
            except DataError as error:
                yield error
                continue
            yield dataclasses.replace(item, where=record.where)


def text(value: Any, what: str, where: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{what} is {value}, not a value", where=where, fix="drop or fix the record")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what} is missing or empty", where=where, fix="drop or fix the record")
    return value.strip()


def gold_letter(answer: Any, options: dict[str, str], where: str) -> str:
    """The gold option's letter, given as a letter or as the option's text."""
    gold = text(answer, "the answer", where)
    if gold.upper() in options:
        return gold.upper()
    matches = [letter for letter, option in options.items() if option.strip() == gold]
    if len(matches) != 1:
        raise DataError(f"the answer {gold!r} is neither an option letter nor one option's text", where=where)
    return matches[0]


def lettered(options: list[Any], where: str) -> dict[str, str]:
    if not isinstance(options, list) or not options:
        raise DataError("options must be a non-empty list", where=where)
    if len(options) > len(string.ascii_uppercase):
        raise DataError(
            f"{len(options)} options: more than the letters A–Z can name", where=where, fix="drop the record"
        )
    return {
        letter: text(option, f"option {letter}", where)
        for letter, option in zip(string.ascii_uppercase, options, strict=False)
    }


def check_options(options: dict[str, str], where: str) -> None:
    """A multiple-choice question needs two options at the least: with one, every answer reads as it
    (a free point in evaluation, a free reward in RL)."""
    if len(options) < 2:
        raise DataError(
            f"a multiple-choice question needs two options at the least; this one has {len(options)}",
            where=where,
            fix="give the record all its options, or drop it",
        )


def check_math_gold(gold: str, where: str) -> None:
    """The gold must be one math-verify reads (the math reward's own criterion), or every answer is
    compared with it as a string. Plain decimals are read without asking (most golds: fast)."""
    from xr_nemo.rewards.math import math_score

    if _PLAIN_NUMBER.fullmatch(gold.strip()) or math_score("", gold)[1]:
        return
    raise UnreadableGold(
        f"math-verify cannot read the gold answer {gold[:80]!r}",
        where=where,
        fix="write the gold as a number or LaTeX math, or drop the record (it is skipped and counted)",
    )


def check_question(options: dict[str, str] | None, math_gold: str | None, where: str) -> None:
    """What makes a question usable whatever reads it: at least two options for multiple choice; for a
    question without options whose answer math-verify judges (`math_gold`), a gold it can read."""
    if options is not None:
        check_options(options, where)
    elif math_gold is not None:
        check_math_gold(math_gold, where)


def option_list(value: Any, where: str) -> list[Any]:
    """Options given as a list, or as the string form of a Python list (MMMU's `"['1', '2']"`), read
    as a literal — never evaluated."""
    if isinstance(value, str):
        value = ast.literal_eval(value.strip())
    if not isinstance(value, list | tuple):
        raise DataError(f"options must be a list, got {type(value).__name__}", where=where)
    return list(value)


def record_images(
    record: Record,
    fields: list[str],
    *,
    required: bool = True,
    first: bool = False,
    folders: tuple[str, ...] = IMAGE_FOLDERS,
) -> tuple[ImageSource, ...]:
    """The images named by `fields` that are present in the record, in that order; with `first`, only
    the first present one (e.g. MathVista's `decoded_image`, else its `image` file name)."""
    values = [value for name in fields if (value := record.fields.get(name)) not in (None, "")]
    return image_list(record, values[:1] if first else values, required=required, folders=folders)


def image_list(
    record: Record, values: list[Any], *, required: bool = True, folders: tuple[str, ...] = IMAGE_FOLDERS
) -> tuple[ImageSource, ...]:
    """The record's image values (PIL, `{bytes, path}`, file names) that are present, as sources."""
    base = record.origin.parent if isinstance(record.origin, Path) else None
    sources = tuple(
        image_source(value, base, record.where, folders) for value in values if value not in (None, "")
    )
    if required and not sources:
        raise MissingImage("the record names no image", where=record.where, fix="drop it or add its image")
    return sources


REGISTRY: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    REGISTRY[cls.name] = cls
    return cls
