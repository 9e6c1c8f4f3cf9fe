"""Qwen3-VL's interleaved multimodal rotary embedding.

Qwen2.5-VL gives each of (temporal, height, width) a contiguous block of the rotary frequencies;
Qwen3-VL interleaves them: frequency i takes the height position where i % 3 == 1 and the width
position where i % 3 == 2 (within the first 3·section entries of each), and the temporal position
everywhere else, so every component spans low and high frequencies. Then the halves repeat, as in
megatron-core's (non-interleaved) rotate-half layout.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding


def interleave_sections(freqs: torch.Tensor, mrope_section: list[int]) -> torch.Tensor:
    """[3, ..., dim/2] frequencies per component → [..., dim/2] in Qwen3-VL's interleaved layout."""
    merged = freqs[0].clone()
    for component in (1, 2):
        picked = slice(component, 3 * mrope_section[component], 3)
        merged[..., picked] = freqs[component, ..., picked]
    return merged


class InterleavedMultimodalRotaryEmbedding(MultimodalRotaryEmbedding):
    def forward(
        self,
        position_ids: torch.Tensor,
        mrope_section: list[int],
        cp_group: torch.distributed.ProcessGroup | None = None,
    ) -> torch.Tensor:
        """Rotary angles [seq, batch, 1, dim] for 3-D position ids [3, batch, seq]. Position ids come
        already split over context-parallel ranks (`build_language_model`), so nothing is split here."""
        positions = position_ids.to(device=self.inv_freq.device, dtype=torch.float32)
        freqs = positions[..., None] * self.inv_freq  # [3, batch, seq, dim/2]
        merged = interleave_sections(freqs, mrope_section)
        emb = torch.cat((merged, merged), dim=-1)  # [batch, seq, dim]
        return emb[..., None, :].transpose(0, 1).contiguous()
