"""The Hugging Face engine against Transformers itself: greedy completions of a padded batch mixing image
and text prompts equal `generate` on each prompt alone, and seeded samples do not depend on what else
is in the batch."""

import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from xr_nemo.generation.engine import Sampling, chat_stop_ids
    from xr_nemo.generation.hf_engine import HFEngine
    from xr_nemo.models.qwen25_vl.processing import image_inputs
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl
    from xr_nemo.tasks.benchmark import EvalItem
    from xr_nemo.tasks.prompts import PromptBuilder

    model_dir = build_tiny_qwen25_vl(tmp_path_factory.mktemp("model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    builder = PromptBuilder(tokenizer, image_inputs(model_dir))
    red, blue = Image.new("RGB", (56, 84), (220, 30, 30)), Image.new("RGB", (112, 56), (30, 30, 220))
    items = [
        EvalItem("one-image", "What colour is the square?", "red", images=(red,)),
        EvalItem("text", "What is 12 + 35?", "47"),
        EvalItem(
            "two-images", "Which image is wider?", "B", {"A": "first", "B": "second"}, images=(red, blue)
        ),
    ]
    prompts = [builder(item) for item in items]
    sampling = Sampling(max_new_tokens=12, temperature=0.0, stop_token_ids=chat_stop_ids(tokenizer))
    return HFEngine(model_dir), prompts, processor, sampling


def _transformers_greedy(engine, prompt, processor, sampling) -> list[int]:
    from xr_nemo.generation.engine import ImagePrompt, token_ids

    ids = torch.tensor([token_ids(prompt)])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if isinstance(prompt, ImagePrompt):
        inputs |= dict(processor(images=list(prompt.images), return_tensors="pt"))
        inputs["mm_token_type_ids"] = (ids == engine.model.config.image_token_id).long()
    out = engine.model.generate(
        **inputs,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=False,
        eos_token_id=list(sampling.stop_token_ids),
        pad_token_id=engine.pad_id,
    )
    tokens = out[0, ids.shape[1] :].tolist()
    end = next((i + 1 for i, t in enumerate(tokens) if t in sampling.stop_token_ids), len(tokens))
    return tokens[:end]


def test_greedy_batch_equals_transformers_generate_one_prompt_at_a_time(setup):
    from xr_nemo.generation.engine import ImagePrompt

    engine, prompts, processor, sampling = setup
    assert [len(p.images) if isinstance(p, ImagePrompt) else 0 for p in prompts] == [1, 0, 2]
    batch = engine.sample(prompts, [0, 1, 2], sampling)
    for prompt, completion in zip(prompts, batch, strict=True):
        assert completion.token_ids == _transformers_greedy(engine, prompt, processor, sampling)
        assert completion.finished == (completion.token_ids[-1] in sampling.stop_token_ids)
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(lp <= 0.0 for lp in completion.logprobs)


def test_seeded_samples_do_not_depend_on_the_batch(setup):
    from dataclasses import replace

    engine, prompts, _, sampling = setup
    hot = replace(sampling, temperature=1.0)
    together = engine.sample(prompts, [11, 12, 13], hot)
    alone = engine.sample([prompts[2]], [13], hot)[0]
    assert together[2].token_ids == alone.token_ids
    torch.testing.assert_close(together[2].logprobs, alone.logprobs, rtol=0, atol=1e-4)
    other_seed = engine.sample([prompts[2]], [14], hot)[0]
    assert other_seed.token_ids != alone.token_ids
