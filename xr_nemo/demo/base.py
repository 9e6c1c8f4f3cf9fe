"""The demo's stand-in for Qwen2.5-VL-7B-Instruct: a tiny random Qwen2.5-VL taught, with a plain
Transformers loop, to read the toy problems as text and as pictures, to write an expression down, and to
answer without reasoning steps. The real recipe starts from an instruction-tuned checkpoint that someone
else trained; this stage only makes the tiny one mean something.

How the tiny model reads, and why it keeps reading through text-only training (ours, `docs/demo.md`):
1. Its vision transformer keeps its random features. The patch merger alone is fitted, before anything
   else, to map each drawn glyph — one merged vision token — onto the language model's embedding of the
   glyph's token: a picture reaches the language model looking like the typed expression.
2. The token embeddings stay frozen here and in the demo's SFT and GRPO (`model.frozen`), so pictures
   keep looking like the text as the language model learns.
3. The tiny model's rotary embedding gives every frequency to mrope's width axis
   (the tiny spec's `rope_sections`), so a one-row picture's tokens have the positions of the typed
   expression; and a picture's question is the text's without the expression, so both stand at the
   same distance from the answer.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from xr_nemo.demo.toy_world import READ_QUESTION
from xr_nemo.generation.engine import ImagePrompt, token_ids
from xr_nemo.io.atomic_dir import atomic_output_dir
from xr_nemo.models.registry import family_for_dir
from xr_nemo.tasks.benchmark import EvalItem
from xr_nemo.tasks.prompts import PromptBuilder

SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "generation_config.json",
)
VISION = "model.visual."
MERGER = "model.visual.merger."
EMBEDDINGS = "model.language_model.embed_tokens."


class _Examples:
    """Chat-formatted examples, prompted as the demo's evaluation prompts them: loss on the response
    (and its end-of-turn token) only."""

    def __init__(self, model_dir: Path, data: Path, template: str) -> None:
        self.family = family_for_dir(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.image_token_id = AutoConfig.from_pretrained(model_dir).image_token_id
        image_inputs = self.family.image_inputs(model_dir)
        self.processor = image_inputs.processor
        self.prompt = PromptBuilder(self.tokenizer, image_inputs, template=template)
        self.rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
        self.root = data.parent
        self.end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def _example(self, row: dict) -> tuple[list[int], list[int], Image.Image | None]:
        images = (self.root / row["image"],) if "image" in row else ()
        prompt = self.prompt(EvalItem(row["question"], row["question"], "", images=images))
        prompt_ids = token_ids(prompt)
        image = prompt.images[0] if isinstance(prompt, ImagePrompt) else None
        response = self.tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [self.end]
        return prompt_ids + response, [-100] * len(prompt_ids) + response, image

    def batch(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        examples = [self._example(row) for row in rows]
        batch = self.family.transformers_batch(
            [ids for ids, _, _ in examples],
            [image for _, _, image in examples if image is not None],
            pad_id=self.tokenizer.pad_token_id,
            image_token_id=self.image_token_id,
            image_processor=self.processor,
        )
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels, _ in examples])
        return batch

    def glyph_pictures(self, rows: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The vision inputs of transcription rows, and the token id of every glyph they show."""
        images = [Image.open(self.root / row["image"]).convert("RGB") for row in rows]
        glyphs = [glyph for row in rows for glyph in _transcription(row)]
        ids = self.tokenizer.convert_tokens_to_ids(glyphs)
        return self.processor(images=images, return_tensors="pt"), torch.tensor(ids)


def _transcription(row: dict) -> str:
    return row["response"].split("<answer>")[1].split("</answer>")[0]


def _merger_inputs(model, examples: _Examples, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the frozen vision transformer hands the merger for each glyph of `rows`' pictures — one
    [4 patches × width] unit per merged token — and each glyph's token id. Computed once: only the
    merger trains on them."""
    visual, captured, units, glyphs = model.model.visual, [], [], []
    hook = visual.merger.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            pictures, ids = examples.glyph_pictures(rows[start : start + 32])
            merged = visual(pictures["pixel_values"], grid_thw=pictures["image_grid_thw"])
            merged = getattr(merged, "pooler_output", merged)
            unit = captured.pop().reshape(len(ids), -1, _merger_width(visual))
            # one-row pictures are one attention window row: the merger's order is the pictures' order
            if not torch.allclose(visual.merger(unit.flatten(0, 1)), merged, atol=1e-5):
                raise RuntimeError("the vision tower reordered the glyphs of a one-row picture")
            units.append(unit)
            glyphs.append(ids)
    hook.remove()
    return torch.cat(units), torch.cat(glyphs)


def _merger_width(visual) -> int:
    return visual.merger.ln_q.weight.shape[0]


def fit_merger(model, examples: _Examples, steps: int, order: random.Random, batch_size: int) -> list[float]:
    """Fit the patch merger so that each glyph's merged vision token lands on the embedding of the
    glyph's token (squared error relative to the embeddings' size); nothing else changes."""
    reading = [row for row in examples.rows if row.get("image") and row["question"] == READ_QUESTION]
    units, glyphs = _merger_inputs(model, examples, order.sample(reading, min(len(reading), 512)))
    merger = model.model.visual.merger
    merger.requires_grad_(True)
    optimizer = torch.optim.Adam(merger.parameters(), lr=3e-3)
    target = model.get_input_embeddings().weight.detach()[glyphs]
    scale = (target**2).mean()
    generator = torch.Generator().manual_seed(order.randrange(2**31))
    losses = []
    for _ in tqdm(range(steps), desc="base model: glyphs onto embeddings", unit="step"):
        pick = torch.randint(len(units), (batch_size * 8,), generator=generator)
        loss = ((merger(units[pick].flatten(0, 1)) - target[pick]) ** 2).mean() / scale
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    merger.requires_grad_(False)
    return losses


def train_base(
    start: Path,
    data: Path,
    out_dir: Path,
    steps: int,
    merger_steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    template: str = "none",
) -> tuple[Path, dict[str, list[float]]]:
    """Train `start` (an HF directory) on `data` and save it to `out_dir`; returns it and the losses of
    both phases (the merger's fit, then the language model's training)."""
    torch.manual_seed(seed)
    order = random.Random(seed)
    examples = _Examples(start, data, template)
    model = examples.family.hf_model_class.from_pretrained(start).train()
    model.requires_grad_(False)
    losses = {"merger": fit_merger(model, examples, merger_steps, order, batch_size)}
    trained = [p for name, p in model.named_parameters() if not name.startswith((VISION, EMBEDDINGS))]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / steps)
    )
    losses["base"] = []
    for _ in tqdm(range(steps), desc="base model: reading and direct answers", unit="step"):
        loss = model(**examples.batch(order.sample(examples.rows, batch_size))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses["base"].append(loss.item())
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        for name in SIDE_FILES:
            if (start / name).exists():
                shutil.copy2(start / name, tmp / name)
    return out_dir, losses
