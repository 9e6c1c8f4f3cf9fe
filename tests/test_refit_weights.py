"""In-memory refit: the live model's weights, gathered over TP=2 or PP=2 and converted by the mapping
table, are exactly the Hugging Face tensors the model was loaded from — every language-model tensor,
no more, no less, on every rank — for every model family; and a vLLM engine refit from them samples
from the checkpoint's weights."""

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.models.registry import family_names

pytestmark = pytest.mark.slow


def refit_worker(hf_dir: str, checkpoint: str, tp: int, pp: int) -> dict[str, torch.Tensor]:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.conversion.in_memory import hf_weights
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.registry import family_of

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = family_of(hf_config).build_model(hf_config, parallel)
    load_model_weights(model, checkpoint)
    weights = {name: tensor.clone() for name, tensor in hf_weights(model)}
    shutdown()
    return weights


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)], ids=["single", "tp2", "pp2"])
@pytest.mark.parametrize("family_name", family_names())
def test_refit_weights_equal_the_hf_checkpoint(tmp_path, family_name, tp, pp, tied):
    from safetensors.torch import load_file

    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.family import OUTPUT_LAYER
    from xr_nemo.models.registry import family_named

    family = family_named(family_name)
    hf_dir = family.build_tiny(tmp_path / "hf", num_kv_heads=2, tie_word_embeddings=tied)
    checkpoint = import_hf(hf_dir, tmp_path / "megatron", progress=False)
    stored = {family.to_hub_name(k): v for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    expected = {k: v for k, v in stored.items() if family.tensor_part(k) != "vision"}
    assert len(expected) < len(stored)  # the frozen vision tower stays out of the refit
    assert (family.hf_name(OUTPUT_LAYER) in expected) is not tied  # vLLM ties it to the embedding itself
    for rank_weights in run_distributed(refit_worker, tp * pp, str(hf_dir), str(checkpoint), tp, pp):
        assert sorted(rank_weights) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(rank_weights[name], tensor), name


def engine_refit_worker(hf_dir: str, checkpoint: str) -> tuple[list[int], list[int], list[float]]:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.generation.engine import Sampling
    from xr_nemo.generation.vllm_engine import VLLMEngine
    from xr_nemo.models.registry import family_of

    parallel = ParallelConfig()
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = family_of(hf_config).build_model(hf_config, parallel)
    load_model_weights(model, checkpoint)
    engine = VLLMEngine(  # started on dummy weights: everything it samples from comes from the refit
        hf_dir, max_model_len=256, dtype=torch.float32, gpu_memory_utilization=0.05, seed=0, kv_cache_gib=0.25
    )
    engine.refit(model)
    prompt = list(range(20, 60))
    completion = engine.sample([prompt], [7], Sampling(max_new_tokens=16, temperature=1.0))[0]
    engine.close()
    shutdown()
    return prompt, completion.token_ids, completion.logprobs


@pytest.mark.vllm
def test_a_refit_qwen3_vl_engine_samples_from_the_checkpoint_weights(tmp_path):
    """vLLM's Qwen3-VL `load_weights` takes the refit's hub names (`model.language_model.*`,
    `lm_head.weight`), and its tied output layer follows the embedding only because the engine sends it
    under that name too: the log-probabilities of what the engine samples are Transformers' on the
    original checkpoint. Tied covers untied's names (the embedding is sent as `lm_head.weight` too).
    Qwen2.5-VL's tied reload is checked in test_vllm_engine.py, its refit end to end by GRPO."""
    pytest.importorskip("vllm")
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.registry import family_named

    family = family_named("qwen3_vl")
    hf_dir = family.build_tiny(tmp_path / "hf", num_kv_heads=2, tie_word_embeddings=True)
    checkpoint = import_hf(hf_dir, tmp_path / "megatron", progress=False)
    prompt, tokens, logprobs = run_distributed(engine_refit_worker, 1, str(hf_dir), str(checkpoint))[0]
    assert tokens
    model = family.hf_model_class.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
    assert logprobs == pytest.approx(expected.tolist(), abs=1e-4)
