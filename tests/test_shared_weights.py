"""On CPU the colocated vLLM engine reads the training model's language-model tensors in place after its
first refit (`xr_nemo.generation.shared_weights`): what it samples has Transformers' log-probabilities on
the training model's current weights — after in-place changes without a copy, and after megatron-core
moves a tensor to new storage — it holds none of its own language-model tensors, and it says why it copies
where it cannot share (a trained vision tower)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.models.registry import family_names

PROMPT = list(range(20, 60))
TOLERANCE = 1e-4  # vLLM's attention and sampler against Transformers' forward, fp32


def _sample(engine) -> tuple[list[int], list[float]]:
    from xr_nemo.generation.engine import Sampling

    completion = engine.sample([PROMPT], [7], Sampling(max_new_tokens=12, temperature=1.0))[0]
    return completion.token_ids, completion.logprobs


def _packed(module: torch.nn.Module) -> bool:
    """Whether a vLLM layer computes with its own packed copy of its weight (not with plain F.linear, or
    the QKV layer's F.linear with its columns reordered)."""
    linear = getattr(module, "cpu_linear", F.linear)
    return linear is not F.linear and not isinstance(linear, partial)


def _transformers_logprobs(hf_dir: str, model, tokens: list[int]) -> list[float]:
    """Teacher-forced log-probabilities of `tokens` after `PROMPT` under Transformers, with the training
    model's current weights."""
    from xr_nemo.conversion.in_memory import hf_weights
    from xr_nemo.models.registry import family_of

    family = family_of(model.hf_config)
    reference = family.hf_model_class.from_pretrained(hf_dir).eval()
    state = {family.to_transformers_name(name): tensor for name, tensor in hf_weights(model)}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(".visual." in name or name == "lm_head.weight" for name in missing)
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1 : -1]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()


def shared_engine_worker(hf_dir: str, checkpoint: str) -> dict:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.generation.shared_weights import why_not_shared
    from xr_nemo.generation.vllm_engine import VLLMEngine
    from xr_nemo.models.registry import family_of

    initialize(ParallelConfig())
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = family_of(hf_config).build_model(hf_config, ParallelConfig())
    load_model_weights(model, checkpoint)
    engine = VLLMEngine(
        hf_dir, max_model_len=256, dtype=torch.float32, gpu_memory_utilization=0.05, seed=0, kv_cache_gib=0.05
    )
    engine.refit(model)
    vllm_model = engine._model()
    ours = {t.untyped_storage().data_ptr() for t in model.language_model.parameters()}
    theirs = list(vllm_model.language_model.parameters())
    result = {
        "shared": engine._shared is not None,
        "own_language_tensors": sum(t.untyped_storage().data_ptr() not in ours for t in theirs),
        "packed_layers": sum(_packed(module) for module in vllm_model.language_model.modules()),
    }
    tokens, logprobs = _sample(engine)
    samples = {"checkpoint": ((tokens, logprobs), _transformers_logprobs(hf_dir, model, tokens))}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an optimizer step's in-place update, everywhere in the language model
        for param in model.language_model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    engine.refit(model)
    tokens, logprobs = _sample(engine)
    samples["updated in place"] = (tokens, logprobs), _transformers_logprobs(hf_dir, model, tokens)
    moved = model.language_model.decoder.layers[0].mlp.linear_fc1.weight
    with torch.no_grad():
        moved.data = moved.data * 1.5  # new storage, as a re-bucketed parameter gets
    engine.refit(model)
    tokens, logprobs = _sample(engine)
    samples["moved"] = (tokens, logprobs), _transformers_logprobs(hf_dir, model, tokens)
    try:
        engine.load_weights([])
    except RuntimeError as error:
        result["load_weights_refused"] = str(error)
    next(model.visual.parameters()).requires_grad_(True)
    result["trained_vision"] = why_not_shared(vllm_model, model)
    engine.close()
    shutdown()
    return {**result, "samples": samples}


@pytest.mark.vllm
@pytest.mark.parametrize("family_name", family_names())
def test_the_engine_reads_the_training_tensors_in_place(tmp_path, family_name):
    pytest.importorskip("vllm")
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.registry import family_named

    family = family_named(family_name)
    hf_dir = family.build_tiny(tmp_path / "hf", num_kv_heads=2, tie_word_embeddings=True)
    checkpoint = import_hf(hf_dir, tmp_path / "megatron", progress=False)
    (result,) = run_distributed(shared_engine_worker, 1, str(hf_dir), str(checkpoint))
    assert result["shared"]
    assert result["own_language_tensors"] == 0 and result["packed_layers"] == 0
    first = result["samples"]["checkpoint"][0]
    for name, ((tokens, logprobs), expected) in result["samples"].items():
        assert tokens, name
        assert logprobs == pytest.approx(expected, abs=TOLERANCE), name
        if name != "checkpoint":  # the engine followed the change: what it samples moved with it
            assert (tokens, logprobs) != first, name
    assert "in place" in result["load_weights_refused"]
    assert "vision tower is trained" in result["trained_vision"]
