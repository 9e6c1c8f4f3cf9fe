"""Qwen2.5-VL as a model family: the one declaration the rest of xr-nemo reaches it through."""

from __future__ import annotations

from types import MappingProxyType

from transformers import Qwen2_5_VLForConditionalGeneration

from xr_nemo.models.family import ModelFamily
from xr_nemo.models.qwen25_vl.config import ARCHITECTURE, language_model_config
from xr_nemo.models.qwen25_vl.mappings import QWEN25_VL_MAPPINGS
from xr_nemo.models.qwen25_vl.model import Qwen25VLModel
from xr_nemo.models.qwen25_vl.naming import tensor_part, to_hub_name, to_transformers_name
from xr_nemo.models.qwen25_vl.processing import image_inputs, transformers_batch
from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config
from xr_nemo.models.qwen25_vl.rope_index import position_ids_for
from xr_nemo.models.qwen25_vl.tiny import VOCABS, build_tiny
from xr_nemo.models.qwen25_vl.vllm import register_vllm, shared_tensors

QWEN25_VL = ModelFamily(
    name="qwen2_5_vl",
    model_type="qwen2_5_vl",
    architectures=(ARCHITECTURE,),
    build_model=Qwen25VLModel,
    language_model_config=language_model_config,
    position_ids=position_ids_for,
    mappings=QWEN25_VL_MAPPINGS,
    to_hub_name=to_hub_name,
    to_transformers_name=to_transformers_name,
    tensor_part=tensor_part,
    hf_model_class=Qwen2_5_VLForConditionalGeneration,
    image_inputs=image_inputs,
    transformers_batch=transformers_batch,
    register_vllm=register_vllm,
    vllm_shared_tensors=shared_tensors,
    build_tiny=build_tiny,
    tiny_vocabs=VOCABS,
    published=MappingProxyType({"7b": qwen25_vl_7b_config}),
)
