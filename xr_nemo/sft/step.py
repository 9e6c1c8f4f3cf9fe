"""The SFT forward step for megatron-core's schedules: next-token loss summed over assistant tokens.

The loss function returns (sum, token count) so megatron-core normalises by the tokens of the whole
global batch (`calculate_per_token_loss`): every assistant token weighs the same whatever the packing,
micro-batching or data-parallel split. Logits are computed at the assistant tokens only
(`logits_only_at`): questions, templates and image tokens need none.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from xr_nemo.distributed.devices import to_device
from xr_nemo.models.scored_positions import (
    gather_scored,
    logits_only_at,
    scatter_scored,
    sequence_first_index,
)


def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss_sum = (per_token_loss.float() * loss_mask).sum()
    tokens = loss_mask.sum().to(torch.int)
    return loss_sum, tokens, {"loss": torch.stack([loss_sum.detach(), tokens.float()])}


def forward_step(data_iterator: Iterator[dict], model: torch.nn.Module):
    """A packed micro-batch (`xr_nemo.data.packing.collate`), moved to the model's device: attention
    stays inside each sample."""
    batch = next(data_iterator)
    scored = to_device(sequence_first_index(batch["loss_mask"]))  # found on the host: no device sync
    batch = to_device(batch)
    labels = batch["labels"]
    with logits_only_at(model, scored) as selected:
        per_token_loss = model(
            batch["tokens"],
            batch["position_ids"],
            None,
            labels=gather_scored(labels, scored) if selected else labels,
            packed_seq_params=batch["packed_seq_params"],
        )
    if selected:
        per_token_loss = scatter_scored(per_token_loss, scored, *labels.shape)
    return per_token_loss, partial(loss_func, batch["loss_mask"])
