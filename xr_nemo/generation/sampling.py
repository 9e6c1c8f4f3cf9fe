"""Drawing one token the same way in every engine that samples with its own per-completion generators."""

from __future__ import annotations

import torch

from xr_nemo.generation.engine import Sampling


def draw(logprobs: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token from `logprobs` (already tempered): argmax at temperature 0, else a draw from the
    top-p nucleus with `generator`."""
    if sampling.temperature == 0:
        return int(logprobs.argmax())
    probs = logprobs.exp()
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
