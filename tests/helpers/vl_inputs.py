"""Chat-templated text and image inputs for tests of the tiny Qwen2.5-VL model."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.models.qwen25_vl.processing import expand_image_placeholders


def vl_batch(model_dir: str | Path, rows: list[tuple[str, list[tuple[int, int]]]]) -> dict[str, torch.Tensor]:
    """A right-padded batch; each row is (question, sizes of its images in pixels). Returns input_ids,
    attention_mask, and pixel_values / image_grid_thw / mm_token_type_ids when there are images."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    sequences, images = [], []
    for number, (question, sizes) in enumerate(rows):
        row_images = [
            Image.new("RGB", size, ((60 * number + 40 * k) % 256, 90 + 30 * k, 200 - 50 * number))
            for k, size in enumerate(sizes)
        ]
        content = [{"type": "image"} for _ in row_images] + [{"type": "text", "text": question}]
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        if row_images:
            grids = processor(images=row_images, return_tensors="pt")["image_grid_thw"]
            prompt = expand_image_placeholders(prompt, grids, processor.merge_size)
        sequences.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        images += row_images
    length = max(map(len, sequences))
    pad = tokenizer.pad_token_id
    batch = {
        "input_ids": torch.tensor([s + [pad] * (length - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences]),
    }
    if images:
        batch.update(processor(images=images, return_tensors="pt"))
        image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        batch["mm_token_type_ids"] = (batch["input_ids"] == image_token).long()
    return batch
