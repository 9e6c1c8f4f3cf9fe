"""Build a tiny Qwen3-VL checkpoint in Hugging Face layout, fully offline.

The file set of `Qwen/Qwen3-VL-8B-Instruct` (config, safetensors weights in the hub's naming, tokenizer
with Qwen's special tokens and a chat template, image processor config with 16-pixel patches,
generation config), with sizes as arguments and seeded random weights. The defaults keep what the
tests need: 64-wide heads (vLLM's CPU attention), four decoder layers with DeepStack feeding the first
two (so that two pipeline stages leave them on the first), and a mrope split in Qwen3-VL's 24:20:20
proportion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from xr_nemo.models.qwen3_vl.config import ARCHITECTURE
from xr_nemo.models.qwen3_vl.naming import to_hub_name
from xr_nemo.models.qwen25_vl.tiny import random_model, write_checkpoint
from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

VOCABS: tuple[str, ...] = ("tiny",)
PATCH_SIZE = 16

# Qwen3-VL's template: ChatML, no default system message, images as vision-start/pad/end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyQwen3VLSpec:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64
    tie_word_embeddings: bool = False
    rope_theta: float = 5_000_000.0
    vision_depth: int = 3
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_num_heads: int = 2
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [0, 2])
    num_position_embeddings: int = 64  # an 8 x 8 grid of learned positions, interpolated per image
    max_position_embeddings: int = 4096
    bpe_vocab_size: int = 512

    @property
    def mrope_section(self) -> list[int]:
        """Qwen3-VL's 24:20:20 split of the rotary half-dimension (temporal, height, width)."""
        half = self.head_dim // 2
        height = width = half * 20 // 64
        return [half - height - width, height, width]


def tiny_config(spec: TinyQwen3VLSpec, vocab_size: int, token_ids: dict[str, int]) -> Qwen3VLConfig:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-6,
        attention_bias=False,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": spec.mrope_section,
            "mrope_interleaved": True,
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
        deepstack_visual_indexes=spec.deepstack_visual_indexes,
        num_position_embeddings=spec.num_position_embeddings,
        patch_size=PATCH_SIZE,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    config.architectures = [ARCHITECTURE]
    return config


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    spec: TinyQwen3VLSpec | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny Qwen3-VL checkpoint to `out_dir` (hub naming) and return the path."""
    spec = spec or TinyQwen3VLSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab_size = len(tokenizer) + -len(tokenizer) % 64  # padded like the hub vocab; extra rows unused
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    config = tiny_config(spec, vocab_size, token_ids)
    config.dtype = dtype

    model = random_model(Qwen3VLForConditionalGeneration, config, seed, dtype)
    state = {to_hub_name(name): tensor for name, tensor in model.state_dict().items()}
    if spec.tie_word_embeddings:
        state.pop("lm_head.weight")
    factor = PATCH_SIZE * 2
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor,
        max_pixels=factor * factor * 64,
        patch_size=PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return write_checkpoint(out, state, config, tokenizer, image_processor)


def build_tiny(
    out_dir: str | Path,
    *,
    vocab: str = "tiny",
    key_naming: str = "hub",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **spec,
) -> Path:
    """The family's tiny factory. Qwen3-VL's hub naming is Transformers' own, so both `key_naming`
    values write the same file; one vocabulary, the tiny BPE."""
    if vocab not in VOCABS:
        raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")
    if key_naming not in ("hub", "transformers"):
        raise ValueError(f"key_naming must be 'hub' or 'transformers', got {key_naming!r}")
    return build_tiny_qwen3_vl(out_dir, TinyQwen3VLSpec(**spec), seed=seed, dtype=dtype)
