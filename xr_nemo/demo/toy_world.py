"""The demo's toy world: three-term arithmetic ("7 + 5 - 3") that takes two reasoning steps, posed as
text or as a picture of the expression.

A programmatic teacher writes the step-by-step trace (`<think>7 + 5 = 12.\\n12 - 3 = 9.</think>`), so
stage 1 has long-CoT data; the answer is verifiable, so stage 2 has a 0/1 reward. Held-out problems are
written twice — as text and as images — in the schema of the `arith_text` / `arith_image` benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

IMAGE_QUESTION = "What is the value of the expression in the image?"
READ_QUESTION = "What expression is written in the image?"
CELL = 28  # one glyph per 28×28 cell: exactly one merged vision token of Qwen2.5-VL (14 px patches, 2×2)


def direct_answer(answer: str) -> str:
    return f"<think>\n\n</think>\n\n<answer>{answer}</answer>"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    c: int
    first: str  # "+" or "-"
    second: str

    @property
    def expression(self) -> str:
        return f"{self.a} {self.first} {self.b} {self.second} {self.c}"

    @property
    def partial(self) -> int:
        return self.a + self.b if self.first == "+" else self.a - self.b

    @property
    def answer(self) -> int:
        return self.partial + self.c if self.second == "+" else self.partial - self.c

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    def trace(self) -> str:
        """The teacher's reasoning and answer, in the released format."""
        first = f"{self.a} {self.first} {self.b} = {self.partial}."
        second = f"{self.partial} {self.second} {self.c} = {self.answer}."
        return f"<think>\n{first}\n{second}\n</think>\n<answer>{self.answer}</answer>"

    def direct(self) -> str:
        """A direct answer in the paper's format: the thinking opened and closed at once (a finished
        response; one that never closes its thinking has no answer)."""
        return direct_answer(str(self.answer))

    def image(self) -> Image.Image:
        """The expression drawn glyph by glyph, each centred in its own cell."""
        glyphs = self.expression.replace(" ", "")
        picture = Image.new("RGB", (CELL * len(glyphs), CELL), "white")
        draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=22)
        for index, glyph in enumerate(glyphs):
            centre = (index * CELL + CELL // 2, CELL // 2)
            draw.text(centre, glyph, fill="black", font=font, anchor="mm")
        return picture


def problems(count: int, seed: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """`count` distinct problems (digits 1–9), none of whose expressions is in `exclude`."""
    rng = random.Random(seed)
    found: dict[str, Problem] = {}
    while len(found) < count:
        problem = Problem(
            rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9), rng.choice("+-"), rng.choice("+-")
        )
        if problem.expression not in exclude:
            found.setdefault(problem.expression, problem)
    return list(found.values())


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@dataclass(frozen=True)
class ToyWorld:
    """Where each stage's data live."""

    root: Path

    @property
    def base(self) -> Path:  # direct answers, text and images: the stand-in for instruction tuning
        return self.root / "base.jsonl"

    @property
    def sft(self) -> Path:  # text-only long chain-of-thought (messages schema)
        return self.root / "sft.jsonl"

    @property
    def prompts(self) -> Path:  # text-only RL prompts ({prompt, answer})
        return self.root / "grpo_prompts.jsonl"

    @property
    def eval_text(self) -> Path:
        return self.root / "eval_text.jsonl"

    @property
    def eval_image(self) -> Path:
        return self.root / "eval_image.jsonl"


def write_toy_world(root: Path, train: int, prompts: int, held_out: int, seed: int = 0) -> ToyWorld:
    """Held-out problems first, then training problems that avoid them."""
    world = ToyWorld(root)
    evaluation = problems(held_out, seed)
    unseen = {p.expression for p in evaluation}
    training = problems(train + prompts, seed + 1, exclude=unseen)
    sft, rl = training[:train], training[train:]
    (root / "images").mkdir(parents=True, exist_ok=True)
    base_rows = []
    for index, problem in enumerate(sft):  # read every picture; answer directly, from a picture or text
        name = f"images/train-{index}.png"
        problem.image().save(root / name)
        base_rows.append(
            {"question": READ_QUESTION, "image": name, "response": direct_answer(problem.expression)}
        )
        if index % 2:
            base_rows.append({"question": IMAGE_QUESTION, "image": name, "response": problem.direct()})
        else:
            base_rows.append({"question": problem.question, "response": problem.direct()})
    _jsonl(world.base, base_rows)
    _jsonl(
        world.sft,
        [
            {
                "messages": [
                    {"role": "user", "content": p.question},
                    {"role": "assistant", "content": p.trace()},
                ]
            }
            for p in sft
        ],
    )
    _jsonl(world.prompts, [{"prompt": p.question, "answer": str(p.answer)} for p in rl])
    _jsonl(
        world.eval_text,
        [{"id": f"t{i}", "question": p.question, "answer": str(p.answer)} for i, p in enumerate(evaluation)],
    )
    image_rows = []
    for index, problem in enumerate(evaluation):
        name = f"images/eval-{index}.png"
        problem.image().save(root / name)
        image_rows.append(
            {"id": f"i{index}", "question": IMAGE_QUESTION, "image": name, "answer": str(problem.answer)}
        )
    _jsonl(world.eval_image, image_rows)
    return world
