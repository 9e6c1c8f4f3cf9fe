"""The one way to an engine: `build_engine` makes any of them from a `GenerationConfig`."""

from __future__ import annotations

from pathlib import Path

import torch

from xr_nemo.config.schema import EngineKind, GenerationConfig
from xr_nemo.errors import ConfigError
from xr_nemo.generation.engine import Engine


def build_engine(
    generation: GenerationConfig,
    model_dir: Path,
    *,
    dtype: torch.dtype,
    max_model_len: int,
    seed: int,
    kind: EngineKind | None = None,
    model: torch.nn.Module | None = None,
    pad_id: int = 0,
    max_images_per_prompt: int = 0,
) -> Engine:
    """`kind` (default `generation.engine`, resolved by the caller when `auto`). A vLLM engine reads the
    weights in `model_dir` unless a training `model` is given to be refit from; the reference engine is
    that model."""
    kind = EngineKind(kind or generation.engine)
    if kind is EngineKind.reference:
        if model is None:
            raise ConfigError(
                "the reference engine generates with a training model, and there is none here",
                where="engine=reference",
                fix="use engine=vllm or engine=hf",
            )
        from xr_nemo.generation.reference import ReferenceEngine

        return ReferenceEngine(model, pad_id)
    if kind is EngineKind.hf:
        from xr_nemo.generation.hf_engine import HFEngine

        return HFEngine(model_dir, dtype)
    if kind is EngineKind.vllm:
        from xr_nemo.generation.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            max_model_len=max_model_len,
            dtype=dtype,
            gpu_memory_utilization=generation.gpu_memory_utilization,
            kv_cache_gib=generation.kv_cache_gib,
            seed=seed,
            load_format="dummy" if model is not None else "auto",
            tensor_parallel_size=generation.tensor_parallel,
            max_images_per_prompt=max_images_per_prompt,
        )
    raise ConfigError(f"engine={kind} must be resolved before an engine is built", where="engine")
