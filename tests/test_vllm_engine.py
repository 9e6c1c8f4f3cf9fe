"""The vLLM rollout engine on CPU: starts without weights, takes them in memory, and a completion
depends only on its prompt, seed and the weights — not on the batch around it — even for batches large
enough that the scheduler cannot prefill every prompt in one step."""

import pytest

from xr_nemo.distributed.local_launch import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def engine_worker(hf_dir: str) -> tuple[list, list, list]:
    import torch
    from safetensors.torch import load_file

    from xr_nemo.generation.engine import Sampling
    from xr_nemo.generation.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        hf_dir, max_model_len=512, dtype=torch.float32, gpu_memory_utilization=0.05, seed=0, kv_cache_gib=0.25
    )
    weights = load_file(f"{hf_dir}/model.safetensors")
    engine.load_weights((name, t) for name, t in weights.items() if not name.startswith("visual."))
    prompts = [[(7 * i + j) % 400 + 20 for j in range(150)] for i in range(64)]
    seeds = list(range(1000, 1064))
    sampling = Sampling(max_new_tokens=12, temperature=1.0)
    everything = engine.sample(prompts, seeds, sampling)
    subset = [5, 40, 17, 63]
    alone = engine.sample([prompts[i] for i in subset], [seeds[i] for i in subset], sampling)
    greedy = engine.sample(prompts[:2], seeds[:2], Sampling(max_new_tokens=12, temperature=0.0))
    engine.close()
    return (
        [(c.token_ids, c.logprobs) for c in everything],
        [(c.token_ids, c.logprobs) for c in alone],
        [c.token_ids for c in greedy],
    )


def test_completions_depend_only_on_prompt_seed_and_weights(tmp_path):
    pytest.importorskip("vllm")
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec(num_kv_heads=2))
    everything, alone, greedy = run_distributed(engine_worker, 1, str(hf_dir))[0]
    for index, (tokens, logprobs) in zip([5, 40, 17, 63], alone, strict=True):
        assert tokens == everything[index][0]
        assert logprobs == pytest.approx(everything[index][1], abs=1e-4)
    assert len({tuple(tokens) for tokens, _ in everything}) > 32  # seeds differ, so do completions

    # the weights loaded in memory are the checkpoint's: greedy equals Transformers' greedy
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    for i, tokens in enumerate(greedy):
        prompt = torch.tensor([[(7 * i + j) % 400 + 20 for j in range(150)]])
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        assert out[0, 150:].tolist() == tokens


def oversized_cache_worker(hf_dir: str) -> str:
    import torch

    from xr_nemo.errors import XrNemoError
    from xr_nemo.generation.vllm_engine import VLLMEngine

    try:
        VLLMEngine(
            hf_dir,
            max_model_len=512,
            dtype=torch.float32,
            gpu_memory_utilization=0.05,
            seed=0,
            kv_cache_gib=1e5,
        )
    except XrNemoError as error:
        return str(error)
    return "no error"


def test_a_kv_cache_that_does_not_fit_names_the_settings_that_size_it(tmp_path):
    pytest.importorskip("vllm")
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec(num_kv_heads=2))
    message = run_distributed(oversized_cache_worker, 1, str(hf_dir))[0]
    assert "could not fit its KV cache" in message and "kv_cache_gib" in message, message


def tied_worker(hf_dir: str) -> tuple[list[int], list[int], list[float]]:
    import torch
    from safetensors.torch import load_file

    from xr_nemo.generation.engine import Sampling
    from xr_nemo.generation.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        hf_dir, max_model_len=256, dtype=torch.float32, gpu_memory_utilization=0.05, seed=0, kv_cache_gib=0.25
    )
    weights = load_file(f"{hf_dir}/model.safetensors")  # tied: no lm_head.weight
    engine.load_weights((name, t) for name, t in weights.items() if not name.startswith("visual."))
    prompt = list(range(20, 60))
    completion = engine.sample([prompt], [7], Sampling(max_new_tokens=16, temperature=1.0))[0]
    engine.close()
    return prompt, completion.token_ids, completion.logprobs


def test_a_refit_reaches_the_output_layer_of_a_model_with_tied_embeddings(tmp_path):
    """vLLM's reload leaves a tied output layer on its start-up (dummy) values unless the engine sends it."""
    pytest.importorskip("vllm")
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec(num_kv_heads=2, tie_word_embeddings=True))
    prompt, tokens, logprobs = run_distributed(tied_worker, 1, str(hf_dir))[0]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
    assert logprobs == pytest.approx(expected.tolist(), abs=1e-4)
