"""Precision and memory settings on the tiny Qwen2.5-VL, on CPU: `model.dtype=bfloat16` trains bf16
parameters through megatron-core's mixed-precision optimizer with fp32 master weights, and its SFT
losses track fp32's; activation recompute (selective, full) changes nothing but when activations are
computed: same loss, same gradients, and the recomputed modules run twice."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

STEPS = 5
# bf16 keeps 8 bits of mantissa (relative rounding 2⁻⁹ ≈ 0.2 %): five steps of a tiny model stay within
# 1 % of fp32's loss, while the loss itself falls by far more than that.
BF16_LOSS_TOLERANCE = 0.01
SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"]


def _hf_config(num_layers: int = 2):
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, tiny_config

    ids = {token: i for i, token in enumerate([*SPECIAL, "<|vision_end|>"])}
    return tiny_config(TinyQwen25VLSpec(num_layers=num_layers), 512, ids)


def _batch(batch: int, length: int) -> dict[str, torch.Tensor]:
    tokens = torch.randint(0, 512, (batch, length + 1), generator=torch.Generator().manual_seed(1))
    return dict(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=torch.ones(batch, length),
        position_ids=torch.arange(length).expand(3, batch, length),
    )


def _forward_step(data_iterator, model):
    from xr_nemo.sft.step import loss_func

    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return per_token_loss, partial(loss_func, batch["loss_mask"])


def _sft_steps(initial: dict, dtype: str) -> dict:
    """STEPS optimizer steps from `initial` (fp32) weights, the model built from `model.dtype=dtype`
    and wrapped as SFT builds and wraps it."""
    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.training.loop import run_schedule
    from xr_nemo.training.setup import build_model, wrap_for_training

    config = SFTConfig()
    config.model.dtype, config.optim.lr = dtype, 1e-3
    model = build_model(_hf_config(), config)
    model.load_state_dict(
        {k: v.to(getattr(torch, dtype)) if torch.is_tensor(v) else v for k, v in initial.items()}
    )
    wrapped, optimizer = wrap_for_training(model, config)
    batch, losses = _batch(2, 64), []
    for _ in range(STEPS):
        wrapped.zero_grad_buffer()
        optimizer.zero_grad()
        (report,) = run_schedule(_forward_step, wrapped, [batch], forward_only=False)
        losses.append((report["loss"][0] / report["loss"][1]).item())
        optimizer.step()
    (inner,) = optimizer.chained_optimizers
    main = [p for group in inner.shard_fp32_from_float16_groups for p in group]
    return {
        "losses": losses,
        "param_dtypes": {str(p.dtype) for p in model.language_model.parameters()},
        "main_dtypes": {str(p.dtype) for p in main},
        "main_count": sum(p.numel() for p in main),
        "trained_count": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def sft_steps_worker() -> dict[str, dict]:
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    initialize(ParallelConfig(), seed=0)
    torch.manual_seed(0)
    initial = Qwen25VLModel(_hf_config()).state_dict()
    results = {dtype: _sft_steps(initial, dtype) for dtype in ("float32", "bfloat16")}
    shutdown()
    return results


def test_bf16_trains_with_fp32_master_weights_and_tracks_fp32():
    (results,) = run_distributed(sft_steps_worker, 1)
    fp32, bf16 = results["float32"], results["bfloat16"]
    assert bf16["param_dtypes"] == {"torch.bfloat16"}
    # every trained bf16 parameter has an fp32 master copy in the optimizer
    assert bf16["main_dtypes"] == {"torch.float32"} and bf16["main_count"] == bf16["trained_count"]
    assert fp32["main_count"] == 0  # fp32 parameters are their own master weights
    assert fp32["losses"][-1] < 0.9 * fp32["losses"][0]
    for ours, reference in zip(bf16["losses"], fp32["losses"], strict=True):
        assert ours == pytest.approx(reference, rel=BF16_LOSS_TOLERANCE)


def recompute_worker() -> dict:
    """Loss, gradients and core-attention calls of one forward and backward pass per recompute mode."""
    from xr_nemo.config import ParallelConfig
    from xr_nemo.config.schema import Recompute
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.layer_settings import LayerSettings
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    initialize(ParallelConfig(), seed=0)
    torch.manual_seed(0)
    initial = Qwen25VLModel(_hf_config(3)).state_dict()
    batch, results = _batch(2, 32), {}
    for mode in Recompute:
        model = Qwen25VLModel(_hf_config(3), layers=LayerSettings(recompute=mode))
        model.load_state_dict(initial)
        calls = []
        for layer in model.language_model.decoder.layers:
            layer.self_attention.core_attention.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).sum()
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results[str(mode)] = {"loss": loss.detach(), "grads": grads, "attention_calls": len(calls)}
    shutdown()
    return results


def test_recompute_gives_the_same_loss_and_gradients():
    (results,) = run_distributed(recompute_worker, 1)
    reference = results["none"]
    assert reference["attention_calls"] == 3
    for mode in ("selective", "full"):
        ours = results[mode]
        assert ours["attention_calls"] == 6  # recomputed in the backward pass
        assert torch.equal(ours["loss"], reference["loss"])
        assert ours["grads"].keys() == reference["grads"].keys()
        for name, grad in ours["grads"].items():
            torch.testing.assert_close(grad, reference["grads"][name], rtol=0, atol=1e-6, msg=name)
