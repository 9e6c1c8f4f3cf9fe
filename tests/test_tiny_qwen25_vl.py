"""The offline tiny Qwen2.5-VL checkpoint: complete, loadable by Transformers in both key namings."""

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.models.qwen25_vl.naming import to_hub_name
from xr_nemo.models.qwen25_vl.processing import expand_image_placeholders
from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl
from xr_nemo.models.qwen25_vl.tiny_tokenizer import REASONING_TOKENS, SPECIAL_TOKENS

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "chat_template.json",
}


def _file_tensors(path):
    with safe_open(path / "model.safetensors", "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


@pytest.mark.parametrize("key_naming", ["hub", "transformers"])
@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_loads_in_transformers_with_every_tensor_from_the_file(tmp_path, key_naming, tied):
    spec = TinyQwen25VLSpec(tie_word_embeddings=tied, num_kv_heads=2 if tied else 1)
    out = build_tiny_qwen25_vl(tmp_path / "model", spec, key_naming=key_naming)
    assert {p.name for p in out.iterdir()} >= EXPECTED_FILES
    stored = _file_tensors(out)
    prefixes = {name.split(".")[0] + "." + name.split(".")[1] for name in stored}
    if key_naming == "hub":
        assert {"model.layers", "visual.blocks", "model.embed_tokens"} <= prefixes
    else:
        assert {"model.language_model", "model.visual"} <= prefixes
    assert ("lm_head.weight" in stored) is not tied

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    loaded = {to_hub_name(name): tensor for name, tensor in model.state_dict().items()}
    for name, tensor in stored.items():
        assert torch.equal(loaded[to_hub_name(name)], tensor), name
    if tied:
        assert torch.equal(loaded["lm_head.weight"], loaded["model.embed_tokens.weight"])
    assert len(stored) == len(loaded) - int(tied)


def test_sizes_come_from_the_spec(tmp_path):
    spec = TinyQwen25VLSpec(
        hidden_size=256, num_heads=4, num_kv_heads=2, num_layers=3, vision_depth=3, fullatt_block_indexes=[2]
    )
    config = json.loads((build_tiny_qwen25_vl(tmp_path, spec) / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]) == (256, 4, 2)
    assert text["num_hidden_layers"] == 3 and vision["depth"] == 3 and vision["fullatt_block_indexes"] == [2]
    assert sum(text["rope_parameters"]["mrope_section"]) == 256 // 4 // 2
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]


def test_tokenizer_has_qwen_special_tokens_and_chatml_template(tmp_path):
    out = build_tiny_qwen25_vl(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for token in SPECIAL_TOKENS + REASONING_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids) == token, token
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2+2?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 2+2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    round_trip = "<think> 2 plus 2 is 4 </think> <answer> 4 </answer>"
    assert tokenizer.decode(tokenizer.encode(round_trip, add_special_tokens=False)) == round_trip


def test_image_goes_through_the_vision_tower(tmp_path):
    out = build_tiny_qwen25_vl(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = Qwen2VLImageProcessorPil.from_pretrained(out)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    image = Image.new("RGB", (84, 56), (200, 30, 30))
    pixels = processor(images=[image], return_tensors="pt")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt = expand_image_placeholders(prompt, pixels["image_grid_thw"], processor.merge_size)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        with_image = model(input_ids=ids, **pixels).logits
        other = processor(images=[Image.new("RGB", (84, 56), (10, 10, 240))], return_tensors="pt")
        with_other_image = model(input_ids=ids, **other).logits
    assert torch.isfinite(with_image).all()
    assert not torch.allclose(with_image, with_other_image)


def test_image_placeholders_expand_per_image_in_order():
    grids = torch.tensor([[1, 4, 6], [1, 2, 2]])  # 6 and 1 merged patches
    prompt = "a<|image_pad|>b<|image_pad|>c"
    assert expand_image_placeholders(prompt, grids, 2) == "a" + "<|image_pad|>" * 6 + "b<|image_pad|>c"
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> but 2 images"):
        expand_image_placeholders("a<|image_pad|>", grids, 2)
