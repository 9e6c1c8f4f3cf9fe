"""Conversion as data: one small mapping object per parameter family, HF (hub naming) ⇄ Megatron.

Mappings work on full, unsharded tensors; tensor-parallel sharding lives in `xr_nemo.conversion.sharding`.
Name patterns use `*` for a layer number and `**` for any dotted suffix. Megatron names are parameter
names with global layer numbers, of local or Transformer Engine layers. Each model family declares its
table once (`ModelFamily.mappings`); the same table drives import, export and in-memory refit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from megatron.core.transformer import TransformerConfig


@dataclass(frozen=True)
class Mapping:
    """A Megatron parameter built from one or more HF tensors, copied as they are."""

    megatron: str
    hf: tuple[str, ...]

    def to_megatron(self, tensors: list[torch.Tensor], config: TransformerConfig) -> torch.Tensor:
        (tensor,) = tensors
        return tensor

    def to_hf(self, tensor: torch.Tensor, config: TransformerConfig) -> list[torch.Tensor]:
        return [tensor]

    def resolve(self, wildcard: str | None) -> tuple[str, tuple[str, ...]]:
        """Concrete names for one wildcard value (a layer number, or a suffix for `**`)."""
        return _fill(self.megatron, wildcard), tuple(_fill(p, wildcard) for p in self.hf)

    def match_megatron(self, name: str) -> str | None:
        """The wildcard value in `name` if it matches this mapping ("" for a match without one)."""
        return _match(self.megatron, name)

    def match_hf(self, name: str) -> str | None:
        """The wildcard value if `name` is this mapping's first HF tensor ("" without a wildcard)."""
        return _match(self.hf[0], name)


def _fill(pattern: str, wildcard: str | None) -> str:
    if wildcard is None:
        return pattern
    return pattern.replace("**", wildcard) if "**" in pattern else pattern.replace("*", wildcard)


def _match(pattern: str, name: str) -> str | None:
    regex = re.escape(pattern).replace(r"\*\*", "(.+)").replace(r"\*", r"(\d+)")
    found = re.fullmatch(regex, name)
    if found is None:
        return None
    return found.group(1) if found.groups() else ""


@dataclass(frozen=True)
class QKVMapping(Mapping):
    """HF q/k/v projections ⇄ Megatron's fused `linear_qkv`, interleaved per query group:
    [q heads of group 0, k of group 0, v of group 0, q heads of group 1, …]."""

    def to_megatron(self, tensors: list[torch.Tensor], config: TransformerConfig) -> torch.Tensor:
        q, k, v = tensors
        groups, head_dim = config.num_query_groups, config.kv_channels
        rest = q.shape[1:]
        per_group = [
            q.reshape(groups, -1, *rest),
            k.reshape(groups, head_dim, *rest),
            v.reshape(groups, head_dim, *rest),
        ]
        return torch.cat(per_group, dim=1).reshape(-1, *rest)

    def to_hf(self, tensor: torch.Tensor, config: TransformerConfig) -> list[torch.Tensor]:
        groups, head_dim = config.num_query_groups, config.kv_channels
        q_rows = config.num_attention_heads // groups * head_dim
        rest = tensor.shape[1:]
        q, k, v = tensor.reshape(groups, q_rows + 2 * head_dim, *rest).split(
            [q_rows, head_dim, head_dim], dim=1
        )
        return [part.reshape(-1, *rest).contiguous() for part in (q, k, v)]


@dataclass(frozen=True)
class GatedMLPMapping(Mapping):
    """HF gate_proj and up_proj ⇄ Megatron's `linear_fc1` = [gate; up]."""

    def to_megatron(self, tensors: list[torch.Tensor], config: TransformerConfig) -> torch.Tensor:
        return torch.cat(tensors, dim=0)

    def to_hf(self, tensor: torch.Tensor, config: TransformerConfig) -> list[torch.Tensor]:
        return [part.contiguous() for part in torch.chunk(tensor, 2, dim=0)]


def find_mapping(megatron_name: str, mappings: tuple[Mapping, ...]) -> tuple[Mapping, str | None]:
    for mapping in mappings:
        wildcard = mapping.match_megatron(megatron_name)
        if wildcard is not None:
            return mapping, wildcard or None
    raise KeyError(f"no mapping for Megatron parameter {megatron_name!r}")
