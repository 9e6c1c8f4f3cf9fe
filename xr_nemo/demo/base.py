"""The demo's stand-in for Qwen2.5-VL-7B-Instruct: a tiny random Qwen2.5-VL taught, with a plain
Transformers loop, to read the toy problems as text and as pictures and to answer directly
(`<answer>9</answer>`, no reasoning). The real recipe starts from an instruction-tuned checkpoint that
someone else trained; this stage only makes the tiny one mean something. Its vision transformer keeps
its random features (fine-tuning them from scratch collapsed them to a constant in our runs); the patch
merger learns to map those features into the language model, enough to read the digits.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.generation.engine import ImagePrompt, token_ids
from xr_nemo.io.atomic_dir import atomic_output_dir
from xr_nemo.models.qwen25_vl.processing import IMAGE_PAD, transformers_batch
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


class _Examples:
    """Chat-formatted examples: loss on the response (and its end-of-turn token) only."""

    def __init__(self, model_dir: Path, data: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        self.prompt = PromptBuilder(self.tokenizer, self.processor)  # prompts exactly as evaluation asks
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

    def batch(self, rows: list[dict], pad: int) -> dict[str, torch.Tensor]:
        examples = [self._example(row) for row in rows]
        batch = transformers_batch(
            [ids for ids, _, _ in examples],
            [image for _, _, image in examples if image is not None],
            pad_id=pad,
            image_token_id=self.tokenizer.convert_tokens_to_ids(IMAGE_PAD),
            image_processor=self.processor,
        )
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels, _ in examples])
        return batch


def train_base(
    start: Path,
    data: Path,
    out_dir: Path,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[Path, list[float]]:
    """Train `start` (an HF directory) on `data` and save it to `out_dir`; returns it and the losses."""
    torch.manual_seed(seed)
    order = random.Random(seed)
    examples = _Examples(start, data)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(start).train()
    for name, parameter in model.named_parameters():  # the ViT keeps its (random) features; the merger learns
        parameter.requires_grad_(not (name.startswith("model.visual.") and ".merger." not in name))
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / steps)
    )
    pad = examples.tokenizer.pad_token_id
    losses = []
    for _ in tqdm(range(steps), desc="base model", unit="step"):
        loss = model(**examples.batch(order.sample(examples.rows, batch_size), pad)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        for name in SIDE_FILES:
            if (start / name).exists():
                shutil.copy2(start / name, tmp / name)
    return out_dir, losses
