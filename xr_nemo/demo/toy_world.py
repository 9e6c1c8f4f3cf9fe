"""The demo's toy world: four-term single-digit arithmetic ("7+2-2-1": every partial result stays in
0–9) that takes three reasoning steps, posed as text or as a picture of the expression.

A programmatic teacher writes the step-by-step trace — the expression read off first, then one step
per line (`<think>\nThe expression:\n7+2-2-1\n7+2=9.\n9-2=7.\n7-1=6.\n</think>`) — so stage 1 has
long-CoT data; the answer is verifiable, so stage 2 has a 0/1 reward. Each step is one fact of a small
table, which a tiny model learns; the answer in one go is a composition of three, which it does not.
Without reasoning, an answer reads the expression and gives the value (`The expression:\n7+2-2-1` in the
thinking, no steps): the base model answers so, and so does the control SFT.

Expressions are written without spaces and on their own line, so that the tokenizer gives one token
per glyph, the same tokens whether the expression is typed or drawn (`demo.base` maps each drawn glyph
onto its token's embedding). Held-out problems are written three times — as text, as pictures, and as
pictures to transcribe — in the schema of the `arith_text`, `arith_image` and `arith_read` benchmarks.

Four disjoint splits: the held-out test problems, the training problems (base model and SFT), the RL
prompts, and validation problems (text and pictures) on which the demo's choices are to be made. Beside
them, probes of the test problems (ours): pictures drawn in a style the model never saw (another
typeface, each glyph moved off its cell's centre), pictures handed to other problems' questions
(shuffled), and blank pictures.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

TERMS = 4
# A picture's question is the text's without the typed expression: the picture stands where the text
# has it, the question that follows is the same, so both sit at the same distance from the answer.
IMAGE_QUESTION = "What is the value of this expression?"
READ_QUESTION = "Write down this expression."
TEXT_QUESTION = "{expression}\n" + IMAGE_QUESTION
COPY_QUESTION = "{expression}\n" + READ_QUESTION
CELL = 28  # one glyph per 28×28 cell: exactly one merged vision token of Qwen2.5-VL (14 px patches, 2×2)


@dataclass(frozen=True)
class Style:
    """How glyphs are drawn: a font file of matplotlib's (None: Pillow's default, the only one the base
    model and its merger ever see), its size, and how many pixels each glyph may move off its cell's
    centre, in each direction."""

    font: str | None = None
    size: int = 22
    jitter: int = 0

    def typeface(self) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if self.font is None:
            return ImageFont.load_default(size=self.size)
        return ImageFont.truetype(
            str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / self.font), self.size
        )


SEEN = Style()
# ours: a serif typeface against the default sans, smaller, each glyph up to 3 px off its cell's centre
UNSEEN = Style(font="DejaVuSerif.ttf", size=20, jitter=3)


def reasoned_answer(lines: list[str], answer: str) -> str:
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n\n<answer>{answer}</answer>"


@dataclass(frozen=True)
class Problem:
    expression: str  # "7+2-2-1"

    def steps(self) -> tuple[list[str], int]:
        """The teacher's lines ("7+2=9.", …) and the value."""
        value, lines = int(self.expression[0]), []
        for index in range(1, len(self.expression), 2):
            operator, operand = self.expression[index], int(self.expression[index + 1])
            result = value + operand if operator == "+" else value - operand
            lines.append(f"{value}{operator}{operand}={result}.")
            value = result
        return lines, value

    @property
    def answer(self) -> str:
        return str(self.steps()[1])

    @property
    def question(self) -> str:
        return TEXT_QUESTION.format(expression=self.expression)

    @property
    def copy_question(self) -> str:
        return COPY_QUESTION.format(expression=self.expression)

    def trace(self) -> str:
        """The teacher's reasoning and answer: read the expression, then one step per line."""
        lines, _ = self.steps()
        return reasoned_answer(["The expression:", self.expression, *lines], self.answer)

    def direct(self) -> str:
        """The answer without reasoning: the expression read, no steps (the base model's way, and the
        control's)."""
        return reasoned_answer(["The expression:", self.expression], self.answer)

    def copy(self) -> str:
        return reasoned_answer(["The expression:", self.expression], self.expression)

    def image(self, style: Style = SEEN, seed: int = 0) -> Image.Image:
        """The expression drawn glyph by glyph, each in its own cell: centred, or moved by up to the
        style's jitter (drawn from `seed`)."""
        picture = self.blank()
        draw, font, shift = ImageDraw.Draw(picture), style.typeface(), random.Random(seed)
        for index, glyph in enumerate(self.expression):
            dx, dy = (shift.randint(-style.jitter, style.jitter) for _ in range(2))
            centre = (index * CELL + CELL // 2 + dx, CELL // 2 + dy)
            draw.text(centre, glyph, fill="black", font=font, anchor="mm")
        return picture

    def blank(self) -> Image.Image:
        """A white picture of the expression's size."""
        return Image.new("RGB", (CELL * len(self.expression), CELL), "white")


def all_problems() -> list[Problem]:
    """Every four-term expression of digits whose running value stays in 0–9 (operands 1–9)."""
    found: list[Problem] = []

    def extend(expression: str, value: int) -> None:
        if len(expression) == 2 * TERMS - 1:
            found.append(Problem(expression))
            return
        for operand in range(1, 10):
            for operator, result in (("+", value + operand), ("-", value - operand)):
                if 0 <= result <= 9:
                    extend(f"{expression}{operator}{operand}", result)

    for first in range(10):
        extend(str(first), first)
    return found


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _messages(question: str, response: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": response}]}


@dataclass(frozen=True)
class ToyWorld:
    """Where each stage's data live."""

    root: Path

    @property
    def split(self) -> Path:  # the expressions of every split, for the report's sanity rows
        return self.root / "split.json"

    @property
    def base(self) -> Path:  # reading and direct answers, text and pictures: the instruction-tuned stand-in
        return self.root / "base.jsonl"

    @property
    def sft(self) -> Path:  # text-only long chain-of-thought (messages schema)
        return self.root / "sft.jsonl"

    @property
    def sft_direct(self) -> Path:  # the control: the same questions answered directly
        return self.root / "sft_direct.jsonl"

    @property
    def prompts(self) -> Path:  # text-only RL prompts ({prompt, answer})
        return self.root / "grpo_prompts.jsonl"

    @property
    def eval_text(self) -> Path:
        return self.root / "eval_text.jsonl"

    @property
    def eval_image(self) -> Path:
        return self.root / "eval_image.jsonl"

    @property
    def eval_read(self) -> Path:
        return self.root / "eval_read.jsonl"

    @property
    def val_text(self) -> Path:  # validation problems as text (t…)
        return self.root / "val_text.jsonl"

    @property
    def probe_image(self) -> Path:  # validation pictures (v…), test problems drawn in the unseen style (u…)
        return self.root / "probe_image.jsonl"

    @property
    def probe_read(self) -> Path:  # the unseen-style pictures to transcribe (u…)
        return self.root / "probe_read.jsonl"

    @property
    def sanity_image(self) -> Path:  # test problems with another problem's picture (s…) or a blank one (b…)
        return self.root / "sanity_image.jsonl"


@dataclass(frozen=True)
class Split:
    test: list[Problem]
    train: list[Problem]
    rl: list[Problem]
    validation: list[Problem]

    def expressions(self) -> dict[str, list[str]]:
        return {
            name: [p.expression for p in getattr(self, name)]
            for name in ("test", "train", "rl", "validation")
        }


def split_problems(train: int, prompts: int, held_out: int, validation: int, seed: int) -> Split:
    """Disjoint splits of one shuffle: test first, then training, RL prompts and validation (so adding
    validation problems leaves the other splits of a seed as they were)."""
    pool = all_problems()
    random.Random(seed).shuffle(pool)
    ends = [held_out, held_out + train, held_out + train + prompts, held_out + train + prompts + validation]
    if ends[-1] > len(pool):
        raise ValueError(f"the toy world has {len(pool)} problems, {ends[-1]} asked for")
    return Split(pool[: ends[0]], pool[ends[0] : ends[1]], pool[ends[1] : ends[2]], pool[ends[2] : ends[3]])


def _solve_row(key: str, question: str, problem: Problem, image: str | None = None) -> dict:
    row = {"id": key, "question": question, "answer": problem.answer, "expression": problem.expression}
    return row if image is None else {**row, "image": image}


def _read_row(key: str, problem: Problem, image: str) -> dict:
    return {"id": key, "question": READ_QUESTION, "image": image, "answer": problem.expression}


def _held_out(
    world: ToyWorld, problems: list[Problem], name: str, key: str = "i"
) -> tuple[list[dict], list[dict], list[dict]]:
    """`problems` as text (t…), as pictures (`key`…) and as pictures to transcribe (r…)."""
    text_rows, image_rows, read_rows = [], [], []
    for index, problem in enumerate(problems):
        picture = f"images/{name}-{index}.png"
        problem.image().save(world.root / picture)
        text_rows.append(_solve_row(f"t{index}", problem.question, problem))
        image_rows.append(_solve_row(f"{key}{index}", IMAGE_QUESTION, problem, picture))
        read_rows.append(_read_row(f"r{index}", problem, picture))
    return text_rows, image_rows, read_rows


def _write_probes(world: ToyWorld, problems: list[Problem], validation: list[dict], seed: int) -> None:
    """The validation pictures beside the first test problems drawn in the unseen style (to solve and
    to transcribe), and those test problems shown with another one's picture or a blank one."""
    unseen, read, sanity = [], [], []
    jitter = random.Random(seed + 3)
    for index, problem in enumerate(problems):
        picture = f"images/unseen-{index}.png"
        problem.image(UNSEEN, seed=jitter.randrange(2**31)).save(world.root / picture)
        unseen.append(_solve_row(f"u{index}", IMAGE_QUESTION, problem, picture))
        read.append(_read_row(f"u{index}", problem, picture))
    order = list(range(len(problems)))
    random.Random(seed + 2).shuffle(order)
    for position, index in enumerate(order):  # each shows the next one's picture: none keeps its own
        shown = order[(position + 1) % len(order)]
        row = _solve_row(f"s{index}", IMAGE_QUESTION, problems[index], f"images/eval-{shown}.png")
        sanity.append({**row, "shown_answer": problems[shown].answer})
    for index, problem in enumerate(problems):
        picture = f"images/blank-{index}.png"
        problem.blank().save(world.root / picture)
        sanity.append(_solve_row(f"b{index}", IMAGE_QUESTION, problem, picture))
    _jsonl(world.probe_image, validation + unseen)
    _jsonl(world.probe_read, read)
    _jsonl(world.sanity_image, sanity)


def write_toy_world(
    root: Path,
    train: int,
    prompts: int,
    held_out: int,
    validation: int = 0,
    probes: int = 0,
    seed: int = 0,
    copy_share: float = 0.15,
) -> ToyWorld:
    """The splits (`split_problems`) as each stage reads them, and `probes` of the test problems as
    the sanity probes read them. A `copy_share` of the SFT questions ask for the expression back, so
    that the reasoning model still follows a reading request (text only, like the rest of SFT)."""
    world = ToyWorld(root)
    split = split_problems(train, prompts, held_out, validation, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    world.split.write_text(json.dumps(split.expressions()) + "\n", encoding="utf-8")

    base_rows = []
    for index, problem in enumerate(split.train):
        name = f"images/train-{index}.png"
        problem.image().save(root / name)
        solve = {"question": IMAGE_QUESTION, "image": name} if index % 2 else {"question": problem.question}
        base_rows += [
            {"question": READ_QUESTION, "image": name, "response": problem.copy()},
            {"question": problem.copy_question, "response": problem.copy()},
            {**solve, "response": problem.direct()},
        ]
    _jsonl(world.base, base_rows)

    copies = set(
        random.Random(seed + 1).sample(range(len(split.train)), round(copy_share * len(split.train)))
    )
    sft, control = [], []
    for index, problem in enumerate(split.train):
        if index in copies:
            sft.append(_messages(problem.copy_question, problem.copy()))
            control.append(_messages(problem.copy_question, problem.copy()))
        else:
            sft.append(_messages(problem.question, problem.trace()))
            control.append(_messages(problem.question, problem.direct()))
    _jsonl(world.sft, sft)
    _jsonl(world.sft_direct, control)
    _jsonl(world.prompts, [{"prompt": p.question, "answer": p.answer} for p in split.rl])

    for path, rows in zip(
        (world.eval_text, world.eval_image, world.eval_read),
        _held_out(world, split.test, "eval"),
        strict=True,
    ):
        _jsonl(path, rows)
    val_text, val_image, _ = _held_out(world, split.validation, "val", key="v")
    _jsonl(world.val_text, val_text)
    _write_probes(world, split.test[:probes], val_image, seed)
    return world
