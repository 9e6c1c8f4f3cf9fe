"""The offline tiny Qwen3-VL checkpoint: complete, loaded by Transformers tensor for tensor, sized by its
spec, written by the CLI, read in the older flat key naming too, and run with an image through
Transformers' generate."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.cli import main
from xr_nemo.conversion.hf_checkpoint import HFCheckpointReader, expected_hf_shapes
from xr_nemo.models.qwen3_vl.naming import to_hub_name
from xr_nemo.models.qwen3_vl.tiny import TinyQwen3VLSpec, build_tiny, build_tiny_qwen3_vl
from xr_nemo.models.qwen25_vl.processing import expand_image_placeholders
from xr_nemo.models.qwen25_vl.tiny_tokenizer import SPECIAL_TOKENS
from xr_nemo.models.registry import family_for_dir, family_named

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


def _flat_name(hub_name: str) -> str:
    """Qwen2.5-VL's flat layout, which some trainers still write for Qwen3-VL."""
    if hub_name.startswith("model.language_model."):
        return "model." + hub_name.removeprefix("model.language_model.")
    if hub_name.startswith("model.visual."):
        return hub_name.removeprefix("model.")
    return hub_name


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_checkpoint_loads_in_transformers_with_every_tensor_from_the_file(tmp_path, tied):
    out = build_tiny_qwen3_vl(tmp_path / "model", TinyQwen3VLSpec(tie_word_embeddings=tied))
    assert {p.name for p in out.iterdir()} >= EXPECTED_FILES
    stored = _file_tensors(out)
    prefixes = {".".join(name.split(".")[:2]) for name in stored}
    assert prefixes == {"model.language_model", "model.visual"} | (set() if tied else {"lm_head.weight"})
    assert any(".deepstack_merger_list." in name for name in stored)

    model = Qwen3VLForConditionalGeneration.from_pretrained(out)
    loaded = model.state_dict()
    assert set(stored) | {"lm_head.weight"} == set(loaded)
    for name, tensor in stored.items():
        assert torch.equal(loaded[name], tensor), name
    assert model.config.tie_word_embeddings is tied
    if tied:
        assert torch.equal(loaded["lm_head.weight"], stored["model.language_model.embed_tokens.weight"])


def test_sizes_come_from_the_spec(tmp_path):
    spec = TinyQwen3VLSpec(
        hidden_size=256,
        intermediate_size=384,
        num_heads=4,
        num_kv_heads=2,
        num_layers=3,
        vision_depth=4,
        deepstack_visual_indexes=[1, 3],
    )
    out = build_tiny_qwen3_vl(tmp_path, spec)
    config = json.loads((out / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]) == (256, 384, 3)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (4, 2, 64)
    assert vision["depth"] == 4 and vision["deepstack_visual_indexes"] == [1, 3]
    assert vision["out_hidden_size"] == 256 and vision["patch_size"] == 16
    rope = text["rope_parameters"]
    assert rope["mrope_interleaved"] and rope["mrope_section"] == [12, 10, 10]  # 24:20:20 of head_dim / 2
    assert text["vocab_size"] % 64 == 0 and text["vocab_size"] >= len(AutoTokenizer.from_pretrained(out))

    # every stored tensor has the shape Transformers' model of this config gives it
    stored = _file_tensors(out)
    assert {name: tuple(t.shape) for name, t in stored.items()} == expected_hf_shapes(
        AutoConfig.from_pretrained(out)
    )
    assert stored["model.language_model.layers.2.self_attn.k_proj.weight"].shape == (2 * 64, 256)
    mergers = {name.split(".")[3] for name in stored if ".deepstack_merger_list." in name}
    assert mergers == {"0", "1"}  # one per DeepStack layer


def test_a_checkpoint_in_the_flat_naming_is_read_under_the_hub_names(tmp_path):
    hub = build_tiny_qwen3_vl(tmp_path / "hub")
    flat = tmp_path / "flat"
    shutil.copytree(hub, flat)
    stored = _file_tensors(hub)
    save_file({_flat_name(name): t for name, t in stored.items()}, flat / "model.safetensors")
    flat_names = set(_file_tensors(flat))
    assert {".".join(name.split(".")[:2]) for name in flat_names} == {"model.layers", "model.embed_tokens",
        "model.norm", "visual.blocks", "visual.patch_embed", "visual.pos_embed", "visual.merger",
        "visual.deepstack_merger_list", "lm_head.weight"}  # fmt: skip

    assert {to_hub_name(name) for name in flat_names} == set(stored)
    reader = HFCheckpointReader(flat)
    assert set(reader.tensors) == set(stored)
    for name, tensor in stored.items():
        assert torch.equal(reader.read(name), tensor), name


def test_the_cli_writes_a_tiny_qwen3_vl_and_refuses_an_unknown_vocabulary(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "tied"), "--family", "qwen3_vl", "--tied", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tied")
    assert family_for_dir(tmp_path / "tied") is family_named("qwen3_vl")
    assert json.loads((tmp_path / "tied" / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in _file_tensors(tmp_path / "tied")
    reference = build_tiny(tmp_path / "reference", seed=3, tie_word_embeddings=True)
    for name, tensor in _file_tensors(reference).items():
        assert torch.equal(_file_tensors(tmp_path / "tied")[name], tensor), name

    assert main(["tiny-model", str(tmp_path / "real"), "--family", "qwen3_vl", "--vocab", "qwen2.5"]) == 2
    error = capsys.readouterr().err
    assert "model family qwen3_vl has no tiny vocabulary 'qwen2.5'" in error and "use one of tiny" in error
    assert not (tmp_path / "real").exists()


def test_tokenizer_has_qwen_special_tokens_and_qwen3_vl_template(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_qwen3_vl(tmp_path))
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids) == token, token
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2+2?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    # no default system message, unlike Qwen2.5-VL's
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_an_image_prompt_runs_through_transformers_generate(tmp_path):
    out = build_tiny_qwen3_vl(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = Qwen2VLImageProcessorPil.from_pretrained(out)
    model = Qwen3VLForConditionalGeneration.from_pretrained(out).eval()
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def inputs(colour: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        pixels = processor(images=[Image.new("RGB", (84, 56), colour)], return_tensors="pt")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompt = expand_image_placeholders(prompt, pixels["image_grid_thw"], processor.merge_size)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        return {"input_ids": ids, "mm_token_type_ids": (ids == image_token).long(), **pixels}

    red = inputs((200, 30, 30))
    # 56 x 84 pixels resize to 64 x 96: a 4 x 6 grid of 16-pixel patches, 2 x 3 merged tokens
    assert red["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert red["pixel_values"].shape == (24, 3 * 2 * 16 * 16)
    assert int((red["input_ids"] == image_token).sum()) == 6

    new_tokens = 6
    with torch.no_grad():
        generated = model.generate(
            **red, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )[0, red["input_ids"].shape[1] :]
        # generate's cached decoding (3-D positions offset after the image) equals full forwards
        ids = red["input_ids"]
        for token in generated:
            grown = {"input_ids": ids, "mm_token_type_ids": (ids == image_token).long()}
            logits = model(**red | grown).logits
            assert int(logits[0, -1].argmax()) == int(token)
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
        with_red = model(**red).logits
        with_blue = model(**inputs((10, 10, 240))).logits
    assert len(generated) == new_tokens
    assert torch.isfinite(with_red).all() and not torch.allclose(with_red, with_blue)
