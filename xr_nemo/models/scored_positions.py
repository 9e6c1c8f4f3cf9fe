"""Logits only at the positions a loss reads.

A GRPO row is a prompt (and its image tokens) followed by a completion, and only the completion's tokens
are scored, yet megatron-core's output layer computes a vocabulary-wide row of logits at every position:
at Qwen2.5-0.5B's shape 272 MFLOP per position forward and twice that backward, against 716 MFLOP for its
24 decoder layers, plus a 151,936-wide float row each. Here the last pipeline stage's output layer gets
only the hidden states of the chosen positions, as megatron-core's own inference does for the last token
(gathering the sequence-parallel shards first and running the layer without sequence parallelism); the
logits come out as one row of those positions (`gather_scored` gives their labels), and `scatter_scored`
puts per-position values back in place. Everything before the output layer is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import ColumnParallelLinear, gather_from_sequence_parallel_region


def sequence_first_index(mask: torch.Tensor) -> torch.Tensor:
    """The positions of `mask`'s [batch, seq] nonzero entries as indices into the model's
    sequence-first [seq × batch] rows, computed where `mask` is (build it on the host: on a GPU this
    would wait for the device). At least one position, so the layer always runs: a micro-batch with
    nothing scored (a placeholder) still takes part in the step."""
    index = mask.t().reshape(-1).nonzero().squeeze(1)
    return index if index.numel() else index.new_zeros(1)


def _select_rows(
    index: torch.Tensor, sequence_parallel: bool, layer: ColumnParallelLinear, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """Forward pre-hook: the output layer's input [seq, batch, hidden] (this rank's sequence shard under
    sequence parallelism, gathered here) reduced to the rows of `index`, as [chosen, 1, hidden]. The
    gather's backward takes this rank's shard without a reduction: the layer, running without sequence
    parallelism, all-reduces its input gradient itself."""
    hidden = args[0]
    if sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, False, group=layer.tp_group)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return (rows.unsqueeze(1), *args[1:]), kwargs


@contextmanager
def logits_only_at(model: object, index: torch.Tensor) -> Iterator[bool]:
    """Within it, the output layer of every last-stage GPTModel in `model` computes logits only at
    `index` (`sequence_first_index`, on the model's device): the model returns [1, chosen, vocab / TP].
    Yields whether any layer does (False on other pipeline stages, and for models that are no
    megatron-core GPTModel, which keep their full output)."""
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    layers = [m.output_layer for m in modules if isinstance(m, GPTModel) and m.post_process]
    settings = [layer.sequence_parallel for layer in layers]
    handles = []
    try:
        for layer, sequence_parallel in zip(layers, settings, strict=True):
            layer.sequence_parallel = False  # its input is now whole: no gather, as megatron-core's inference
            hook = partial(_select_rows, index, sequence_parallel)
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        yield bool(layers)
    finally:
        for handle in handles:
            handle.remove()
        for layer, sequence_parallel in zip(layers, settings, strict=True):
            layer.sequence_parallel = sequence_parallel


def gather_scored(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-position `values` [batch, seq] (labels) at the rows `index` chose, as [1, chosen]: in the
    order of the logits `logits_only_at` gives."""
    return values.t().reshape(1, -1).index_select(1, index)


def scatter_scored(values: torch.Tensor, index: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Per-position `values` [1, chosen] of the rows `index` chose, back in place as [batch, seq], zero
    elsewhere; differentiable with respect to `values`."""
    flat = values.new_zeros(seq * batch).index_copy(0, index, values.reshape(-1))
    return flat.view(seq, batch).t()
