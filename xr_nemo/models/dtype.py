"""The parameter dtype a config asks for."""

from __future__ import annotations

import torch

from xr_nemo.config.schema import Dtype


def params_dtype(name: Dtype | str) -> torch.dtype:
    """`auto` is bfloat16 on GPU and float32 on CPU (where bfloat16 matmuls are slow)."""
    if Dtype(name) is Dtype.auto:
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, str(name))
