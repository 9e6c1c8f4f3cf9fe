"""docs/eval.md, "What the model sees": each prompt shown there is what the code renders today, system
turn included."""

import json
import re
from pathlib import Path

from xr_nemo.grpo.prompts import load_prompts
from xr_nemo.tasks.benchmark import EvalItem
from xr_nemo.tasks.prompts import PromptBuilder

DOC = Path(__file__).resolve().parents[1] / "docs" / "eval.md"
QUESTION = "What is 1/2 + 1/3?"
CHOICE = EvalItem(
    "x",
    "Which organ does the arrow in <image 1> point to?",
    "B",
    {"A": "Liver", "B": "Spleen", "C": "Left kidney", "D": "Pancreas"},
    images=("a.png",),
)


def _documented() -> list[str]:
    section = DOC.read_text(encoding="utf-8").split("## What the model sees\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```text\n(.*?)```", section, re.DOTALL)


def _rendered(tokenizer, tmp_path: Path) -> list[str]:
    builder = PromptBuilder(tokenizer, template="paper")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": QUESTION, "answer": "5/6"}) + "\n", encoding="utf-8")
    training = load_prompts(str(prompts), "train", tokenizer).token_ids[0]
    return [
        builder.text(CHOICE),
        builder.text(EvalItem("y", QUESTION, "5/6")),
        tokenizer.decode(training),
    ]


SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # Qwen2.5-VL's default


def test_the_documented_prompts_are_what_the_code_renders(tiny_tokenizer, tmp_path):
    rendered = _rendered(tiny_tokenizer, tmp_path)
    assert all(text.startswith(SYSTEM_TURN) for text in rendered)
    assert _documented() == rendered, "docs/eval.md's blocks should read:\n\n" + "\n\n".join(rendered)
