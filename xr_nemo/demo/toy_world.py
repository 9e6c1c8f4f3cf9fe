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
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TERMS = 4
# A picture's question is the text's without the typed expression: the picture stands where the text
# has it, the question that follows is the same, so both sit at the same distance from the answer.
IMAGE_QUESTION = "What is the value of this expression?"
READ_QUESTION = "Write down this expression."
TEXT_QUESTION = "{expression}\n" + IMAGE_QUESTION
COPY_QUESTION = "{expression}\n" + READ_QUESTION
CELL = 28  # one glyph per 28×28 cell: exactly one merged vision token of Qwen2.5-VL (14 px patches, 2×2)


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

    def image(self) -> Image.Image:
        """The expression drawn glyph by glyph, each centred in its own cell."""
        picture = Image.new("RGB", (CELL * len(self.expression), CELL), "white")
        draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=22)
        for index, glyph in enumerate(self.expression):
            draw.text((index * CELL + CELL // 2, CELL // 2), glyph, fill="black", font=font, anchor="mm")
        return picture


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


def write_toy_world(
    root: Path, train: int, prompts: int, held_out: int, seed: int = 0, copy_share: float = 0.15
) -> ToyWorld:
    """Held-out problems first, then disjoint training problems (base and SFT) and RL prompts. A
    `copy_share` of the SFT questions ask for the expression back, so that the reasoning model still
    follows a reading request (text only, like the rest of SFT)."""
    world = ToyWorld(root)
    pool = all_problems()
    random.Random(seed).shuffle(pool)
    if held_out + train + prompts > len(pool):
        raise ValueError(f"the toy world has {len(pool)} problems, {held_out + train + prompts} asked for")
    evaluation, training = pool[:held_out], pool[held_out : held_out + train]
    rl = pool[held_out + train : held_out + train + prompts]
    (root / "images").mkdir(parents=True, exist_ok=True)

    base_rows = []
    for index, problem in enumerate(training):
        name = f"images/train-{index}.png"
        problem.image().save(root / name)
        solve = {"question": IMAGE_QUESTION, "image": name} if index % 2 else {"question": problem.question}
        base_rows += [
            {"question": READ_QUESTION, "image": name, "response": problem.copy()},
            {"question": problem.copy_question, "response": problem.copy()},
            {**solve, "response": problem.direct()},
        ]
    _jsonl(world.base, base_rows)

    copies = set(random.Random(seed + 1).sample(range(len(training)), round(copy_share * len(training))))
    sft, control = [], []
    for index, problem in enumerate(training):
        if index in copies:
            sft.append(_messages(problem.copy_question, problem.copy()))
            control.append(_messages(problem.copy_question, problem.copy()))
        else:
            sft.append(_messages(problem.question, problem.trace()))
            control.append(_messages(problem.question, problem.direct()))
    _jsonl(world.sft, sft)
    _jsonl(world.sft_direct, control)
    _jsonl(world.prompts, [{"prompt": p.question, "answer": p.answer} for p in rl])

    text_rows, image_rows, read_rows = [], [], []
    for index, problem in enumerate(evaluation):
        name = f"images/eval-{index}.png"
        problem.image().save(root / name)
        text_rows.append({"id": f"t{index}", "question": problem.question, "answer": problem.answer})
        image_rows.append(
            {"id": f"i{index}", "question": IMAGE_QUESTION, "image": name, "answer": problem.answer}
        )
        read_rows.append(
            {"id": f"r{index}", "question": READ_QUESTION, "image": name, "answer": problem.expression}
        )
    _jsonl(world.eval_text, text_rows)
    _jsonl(world.eval_image, image_rows)
    _jsonl(world.eval_read, read_rows)
    return world
