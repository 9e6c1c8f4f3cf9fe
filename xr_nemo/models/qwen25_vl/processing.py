"""Prompt processing Qwen2.5-VL needs beside its tokenizer and PIL image processor.

Transformers' `Qwen2_5_VLProcessor` does this too, but it requires torchvision (for its video
processor), which cannot be installed beside the CPU torch.
"""

from __future__ import annotations

import torch

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
