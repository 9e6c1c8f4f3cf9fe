"""DeepStack: Qwen3-VL adds visual features taken from inside its vision tower to the hidden states of
the first decoder layers, at the image tokens (the output of layer k gets the k-th feature set).

The features reach the layers through the slot megatron-core's decoder block keeps for cross-attention
inputs (`context`, `context_mask`), which Qwen3-VL's layers do not otherwise use: the block hands them
to every layer and saves them with the layer inputs under activation recompute, so a recomputed layer
adds the same features. `context_mask` [seq, batch] marks this rank's image tokens (its context- and
sequence-parallel slice) and `context` [feature sets, tokens, hidden] holds their features in the
order those tokens appear in a [seq, batch] tensor.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer


class DeepStackLayer(TransformerLayer):
    """megatron-core's layer, then this layer's DeepStack features added at the image tokens."""

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        output, context = super().forward(*args, **kwargs)
        feature_set = self.layer_number - 1  # global, 0-based
        if context is None or feature_set >= context.shape[0]:
            return output, context
        at_images = kwargs["context_mask"]
        added = output[at_images] + context[feature_set].to(output.dtype)
        return output.masked_scatter(at_images.unsqueeze(-1), added), context


def feature_order(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """[seq, batch]: at each image token, the index of its feature in Transformers' order (row by row
    through the batch); -1 elsewhere."""
    is_image = input_ids == image_token_id
    order = torch.cumsum(is_image.flatten(), 0).view_as(is_image) - 1
    return torch.where(is_image, order, -1).t().contiguous()


def deepstack_inputs(local_order: torch.Tensor, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder block's `context` and `context_mask` from this rank's slice of `feature_order` and
    the tower's DeepStack feature sets ([image tokens, hidden] each)."""
    at_images = local_order >= 0
    return {"context": torch.stack(features)[:, local_order[at_images]], "context_mask": at_images}
