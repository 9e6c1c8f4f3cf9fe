"""Models, batches, training steps and the device, as the checks of `gpu_check.py` share them.

The device is CUDA; `use_device("cpu")` (`gpu_check.py --device cpu`) runs the same code on the CPU so
that its plumbing can be tested without a GPU: there, synchronising is a no-op and device memory is not
measured (None), and the numbers say nothing about a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {},  # TinyQwen25VLSpec's defaults: 2 layers, hidden 128, 2 heads of 64
    "1.5b": dict(  # Qwen2.5-1.5B's language model
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
}
VOCAB_SIZES = {"tiny": 512, "1.5b": 151_936}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>")
SPECIAL_TOKENS += ("<|vision_end|>",)
GIB = 1024**3

_device = "cuda"


# ── the device ───────────────────────────────────────────────────────────────────────────────────────


def use_device(name: str) -> None:
    """ "cuda" (the checks' purpose) or "cpu" (their plumbing, in tests)."""
    global _device
    _device = name


def device():
    import torch

    return torch.device(_device)


def on_gpu() -> bool:
    return _device == "cuda"


def synchronize() -> None:
    import torch

    if on_gpu():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    import torch

    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    """The most device memory tensors held since the last reset; None on the CPU (not measured)."""
    import torch

    return torch.cuda.max_memory_allocated() / GIB if on_gpu() else None


def release_memory() -> None:
    """Free cached blocks between runs of one check. Guarded: after a CUDA error the call itself raises,
    and the error that matters is the first one."""
    import contextlib
    import gc

    import torch

    gc.collect()
    if on_gpu():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()


# ── models and batches ───────────────────────────────────────────────────────────────────────────────


def hf_config(shape: str):
    """A Qwen2.5-VL config of `shape` (the tiny vision tower), special tokens at the vocabulary's end."""
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, tiny_config

    vocab = VOCAB_SIZES[shape]
    ids = {token: vocab - 1 - i for i, token in enumerate(SPECIAL_TOKENS)}
    return tiny_config(TinyQwen25VLSpec(**SHAPES[shape]), vocab, ids)


def build(hf, impl: str, dtype=None, **settings):
    """Qwen25VLModel on the device with `impl` layers (bf16 unless `dtype`); settings as LayerSettings'."""
    import torch

    from xr_nemo.models.layer_settings import LayerSettings
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    layers = LayerSettings(impl, **settings)
    return Qwen25VLModel(hf, params_dtype=dtype or torch.bfloat16, layers=layers).to(device())


def load_weights(model, state: dict) -> None:
    """`state` (another model's, maybe another dtype) into `model`; only TE's FP8 metadata may differ."""
    import torch

    dtype = next(model.parameters()).dtype
    weights = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in state.items()
        if torch.is_tensor(value) and not key.endswith("_extra_state")
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(key.endswith("_extra_state") for key in missing), (missing, unexpected)


def text_batch(tokens, loss_mask=None) -> dict:
    """Next-token inputs, labels, loss mask and text mrope positions of [batch, length + 1] tokens."""
    import torch

    batch, length = tokens.shape[0], tokens.shape[1] - 1
    positions = torch.arange(length, device=tokens.device).expand(3, batch, length)
    mask = torch.ones(batch, length, device=tokens.device) if loss_mask is None else loss_mask
    return dict(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=mask,
        position_ids=positions,
        packed_seq_params=None,
    )


def random_tokens(hf, batch: int, length: int, seed: int = 0, vocab: int | None = None):
    import torch

    high = vocab or hf.text_config.vocab_size - len(SPECIAL_TOKENS)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, length), generator=generator).to(device())


def to_device(batch: dict) -> dict:
    """A collated micro-batch on the check's device, `PackedSeqParams` fields included."""
    from xr_nemo.distributed import devices

    return devices.to_device(batch, device())


def relative_error(ours, reference) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


# ── training ─────────────────────────────────────────────────────────────────────────────────────────


def train_step(wrapped, optimizer, batch: dict | list[dict]) -> float:
    """One optimizer step through megatron-core's schedule, as SFT takes it, over one micro-batch or a
    list of them; the mean token loss."""
    from xr_nemo.sft.step import forward_step
    from xr_nemo.training.loop import run_schedule

    microbatches = batch if isinstance(batch, list) else [batch]
    wrapped.zero_grad_buffer()
    optimizer.zero_grad()
    reports = run_schedule(forward_step, wrapped, microbatches, forward_only=False)
    optimizer.step()
    total = sum(report["loss"][0] for report in reports)
    count = sum(report["loss"][1] for report in reports)
    return (total / count).item()


def for_training(model, lr: float, dtype: str = "bfloat16"):
    """`model` wrapped as training wraps it (DDP; with bf16, fp32 master weights in Adam)."""
    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.training.setup import wrap_for_training

    config = SFTConfig()
    config.model.dtype, config.optim.lr = dtype, lr
    return wrap_for_training(model, config)


def time_per_step(step: Callable[[], Any], timed: int, warm_up: int = 3) -> float:
    """Seconds per call of `step`, after `warm_up` calls, device work included."""
    for _ in range(warm_up):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    synchronize()
    return (time.perf_counter() - start) / timed
