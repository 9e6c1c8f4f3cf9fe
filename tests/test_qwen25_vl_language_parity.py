"""Qwen2.5-VL's language model on megatron-core against Transformers: same weights, same logits.

Weights go HF → Megatron through the conversion mappings; fp32; text only, a batch with padding.
"""

import pytest
import torch

from xr_nemo.testing.multiprocess import run_distributed

TOL = 1e-4


def megatron_logits_worker(model_dir: str, tensor_parallel: int, input_ids, attention_mask) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.mappings import QWEN25_VL_LANGUAGE_MAPPINGS, find_mapping
    from xr_nemo.conversion.naming import to_hub_name
    from xr_nemo.conversion.sharding import shard_for_this_rank
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.config import language_model_config
    from xr_nemo.models.qwen25_vl.language_model import build_language_model, causal_padding_mask
    from xr_nemo.models.qwen25_vl.rope_index import mrope_position_ids

    parallel = ParallelConfig(tensor_parallel=tensor_parallel)
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(model_dir)
    config, shape = language_model_config(hf_config, parallel)
    model = build_language_model(config, shape).eval()
    hf = {to_hub_name(k): v for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            mapping, layer = find_mapping(name, QWEN25_VL_LANGUAGE_MAPPINGS)
            _, hf_names = mapping.resolve(layer)
            full = mapping.to_megatron([hf[n] for n in hf_names], config)
            param.copy_(shard_for_this_rank(full, param, name, gated=True))
    positions = mrope_position_ids(
        input_ids,
        image_token_id=hf_config.image_token_id,
        spatial_merge_size=hf_config.vision_config.spatial_merge_size,
        attention_mask=attention_mask,
    )
    mask = causal_padding_mask(attention_mask)
    with torch.no_grad():
        logits = model(input_ids, positions, mask)
        logits = gather_from_tensor_model_parallel_region(logits)
    shutdown()
    return logits


@pytest.mark.parametrize("tensor_parallel", [1, 2])
@pytest.mark.parametrize("tied", [False, True])
def test_text_logits_match_transformers(tmp_path, tensor_parallel, tied):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from xr_nemo.testing.qwen25_vl import TinyQwen25VLSpec, build_tiny_qwen25_vl

    spec = TinyQwen25VLSpec(num_heads=4, num_kv_heads=2, hidden_size=256, tie_word_embeddings=tied)
    model_dir = build_tiny_qwen25_vl(tmp_path / "tiny", spec)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 500, (2, 12), generator=generator)
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 9:] = 0  # right padding in the second row
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    got = run_distributed(
        megatron_logits_worker, tensor_parallel, str(model_dir), tensor_parallel, input_ids, attention_mask
    )[0]
    valid = attention_mask.bool()
    assert got.shape == expected.shape
    assert (got[valid] - expected[valid]).abs().max().item() <= TOL
