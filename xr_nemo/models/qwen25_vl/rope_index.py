"""3-D (temporal, height, width) rotary position ids for Qwen2.5-VL: the one place they are computed.

Text tokens advance all three components together by one per token. An image's `<|image_pad|>` run
of `t·(h/m)·(w/m)` tokens (m: spatial merge size) takes the grid of its merged patches: temporal
index, row and column, each offset by the position where the image starts; the text after it resumes
at that start plus `max(h, w) / m`. This is Transformers' `get_rope_index` for images; padding
(attention mask 0) gets position 0, and the positions of the valid tokens are laid out as if the
padding were absent.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import Qwen2_5_VLConfig

from xr_nemo.errors import XrNemoError
from xr_nemo.models.family import PositionIds


def _image_positions(start: int, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    t, h, w = (int(v) for v in grid_thw)
    h, w = h // merge, w // merge
    temporal = torch.arange(t).view(-1, 1, 1).expand(t, h, w)
    rows = torch.arange(h).view(1, -1, 1).expand(t, h, w)
    cols = torch.arange(w).view(1, 1, -1).expand(t, h, w)
    return torch.stack([temporal, rows, cols]).reshape(3, -1) + start


def mrope_position_ids(
    input_ids: torch.Tensor,
    *,
    image_token_id: int,
    spatial_merge_size: int,
    image_grid_thw: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Position ids of shape [3, batch, seq] for `input_ids` of shape [batch, seq].

    `image_grid_thw` lists the (t, h, w) patch grid of every image in the batch, in the order the
    images appear (row by row through the batch).
    """
    batch, seq = input_ids.shape
    positions = torch.zeros(3, batch, seq, dtype=torch.long)
    grids = iter(image_grid_thw if image_grid_thw is not None else [])
    for row in range(batch):
        valid = (
            attention_mask[row].bool() if attention_mask is not None else torch.ones(seq, dtype=torch.bool)
        )
        is_image = (input_ids[row][valid] == image_token_id).tolist()
        pieces, current, index = [], 0, 0
        while index < len(is_image):
            run_end = index
            while run_end < len(is_image) and is_image[run_end] == is_image[index]:
                run_end += 1
            if not is_image[index]:
                pieces.append(torch.arange(run_end - index).expand(3, -1) + current)
                current += run_end - index
                index = run_end
                continue
            grid = next(grids, None)
            if grid is None:
                raise XrNemoError(
                    "more <|image_pad|> runs than entries in image_grid_thw",
                    where=f"batch row {row}, token {index}",
                    fix="pass one (t, h, w) grid per image, in the order the images appear",
                )
            image = _image_positions(current, grid, spatial_merge_size)
            if image.shape[1] > run_end - index:
                raise XrNemoError(
                    f"image grid {tuple(int(v) for v in grid)} needs {image.shape[1]} <|image_pad|> tokens, "
                    f"the prompt has {run_end - index}",
                    where=f"batch row {row}, token {index}",
                    fix="expand each image placeholder to prod(grid_thw) / merge_size**2 tokens",
                )
            pieces.append(image)
            current += max(int(grid[1]), int(grid[2])) // spatial_merge_size
            index += image.shape[1]  # adjacent images form one run: the next grid takes the rest
        if pieces:
            positions[:, row, valid] = torch.cat(pieces, dim=1)
    return positions


def position_ids_for(hf_config: Qwen2_5_VLConfig) -> PositionIds:
    """`mrope_position_ids` with the image token and merge size of `hf_config`."""
    return partial(
        mrope_position_ids,
        image_token_id=hf_config.image_token_id,
        spatial_merge_size=hf_config.vision_config.spatial_merge_size,
    )
