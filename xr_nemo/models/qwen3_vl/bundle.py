"""Qwen3-VL (dense) as a model family: the one declaration the rest of xr-nemo reaches it through.

Its prompts, image processor and 3-D position ids are Qwen2.5-VL's (for images, Qwen3-VL's
`get_rope_index` lays positions out the same way); everything else is its own.
"""

from __future__ import annotations

from functools import partial
from types import MappingProxyType

from transformers import Qwen3VLForConditionalGeneration

from xr_nemo.models.family import ModelFamily
from xr_nemo.models.qwen3_vl.config import ARCHITECTURE, language_model_config
from xr_nemo.models.qwen3_vl.mappings import QWEN3_VL_MAPPINGS
from xr_nemo.models.qwen3_vl.model import Qwen3VLModel
from xr_nemo.models.qwen3_vl.naming import tensor_part, to_hub_name, to_transformers_name
from xr_nemo.models.qwen3_vl.published import qwen3_vl_8b_config
from xr_nemo.models.qwen3_vl.tiny import VOCABS, build_tiny
from xr_nemo.models.qwen3_vl.vllm import register_vllm
from xr_nemo.models.qwen25_vl.processing import image_inputs, transformers_batch
from xr_nemo.models.qwen25_vl.rope_index import position_ids_for
from xr_nemo.models.qwen25_vl.vllm import shared_tensors

QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    model_type="qwen3_vl",
    architectures=(ARCHITECTURE,),
    build_model=Qwen3VLModel,
    language_model_config=language_model_config,
    position_ids=position_ids_for,
    mappings=QWEN3_VL_MAPPINGS,
    to_hub_name=to_hub_name,
    to_transformers_name=to_transformers_name,
    tensor_part=tensor_part,
    hf_model_class=Qwen3VLForConditionalGeneration,
    image_inputs=image_inputs,
    transformers_batch=transformers_batch,
    register_vllm=register_vllm,
    vllm_shared_tensors=partial(shared_tensors, qk_norm=True),
    build_tiny=build_tiny,
    tiny_vocabs=VOCABS,
    published=MappingProxyType({"8b": qwen3_vl_8b_config}),
)
