"""Prompt processing Qwen2.5-VL needs beside its tokenizer and PIL image processor.

Transformers' `Qwen2_5_VLProcessor` does this too, but it requires torchvision (for its video
processor), which cannot be installed beside the CPU torch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.models.family import ImageInputs

IMAGE_PAD = "<|image_pad|>"


def expand_image_placeholders(prompt: str, image_grid_thw: torch.Tensor, merge_size: int) -> str:
    """Give each `<|image_pad|>` of a chat-templated prompt as many copies as its image has merged
    patches, `prod(grid_thw) / merge_size**2`; images are taken in the order they appear."""
    pieces = prompt.split(IMAGE_PAD)
    if len(pieces) - 1 != len(image_grid_thw):
        raise ValueError(f"the prompt has {len(pieces) - 1} {IMAGE_PAD} but {len(image_grid_thw)} images")
    counts = [int(grid.prod()) // merge_size**2 for grid in image_grid_thw]
    return pieces[0] + "".join(
        IMAGE_PAD * count + piece for count, piece in zip(counts, pieces[1:], strict=True)
    )


def image_inputs(model_dir: str | Path) -> ImageInputs:
    """The checkpoint's PIL image processor (`preprocessor_config.json`) and its placeholder expansion."""
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    return ImageInputs(processor, partial(expand_image_placeholders, merge_size=processor.merge_size))


def transformers_batch(
    rows: list[list[int]],
    images: list,
    *,
    pad_id: int,
    image_token_id: int,
    image_processor,
    pad_side: str = "right",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Inputs for Transformers' `Qwen2_5_VLForConditionalGeneration` from token rows whose image
    placeholders are already expanded, and their images in order: padded ids and attention mask (left
    padding for `generate`, right for training), pixel values, grid sizes and image-token types."""
    width = max(map(len, rows))

    def padded(row: list[int], fill: int) -> list[int]:
        padding = [fill] * (width - len(row))
        return padding + row if pad_side == "left" else row + padding

    input_ids = torch.tensor([padded(row, pad_id) for row in rows])
    batch = {"input_ids": input_ids, "attention_mask": torch.tensor([padded([1] * len(r), 0) for r in rows])}
    if images:
        processed = image_processor(images=images, return_tensors="pt")
        pixels = processed["pixel_values"]
        batch["pixel_values"] = pixels if dtype is None else pixels.to(dtype)
        batch["image_grid_thw"] = processed["image_grid_thw"]
        batch["mm_token_type_ids"] = (input_ids == image_token_id).long()
    return batch
