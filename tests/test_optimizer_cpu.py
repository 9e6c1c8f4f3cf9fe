"""The optimizer on CPU (`xr_nemo.training.optimizer`): at one data-parallel rank the distributed
optimizer's reduce-scatter and all-gather are skipped, and Adam runs torch's fused kernel. On the tiny
Qwen2.5-VL, SFT steps are taken from the same weights with megatron-core's own behaviour put back
(the collectives; its single-tensor Adam): skipping the collectives changes no bit, the fused kernel
stays within rounding of the single-tensor loop, and a checkpoint written with megatron-core's default
implementation resumes with the fused one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

STEPS = 4


def _batch() -> dict[str, torch.Tensor]:
    tokens = torch.randint(8, 512, (2, 33), generator=torch.Generator().manual_seed(1))
    return dict(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=torch.ones(2, 32),
        position_ids=torch.arange(32).expand(3, 2, 32),
    )


def _forward_step(data_iterator, model):
    from xr_nemo.sft.step import loss_func

    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return per_token_loss, partial(loss_func, batch["loss_mask"])


def _counting_collectives(calls: Counter) -> None:
    """Count the buffer collectives megatron-core's bucket groups call (through its module-level names)."""
    from megatron.core.distributed import param_and_grad_buffer

    for name in ("dist_reduce_scatter_func", "dist_all_gather_func"):
        inner = getattr(param_and_grad_buffer, name)

        def counted(*args, name=name, inner=inner, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)

        setattr(param_and_grad_buffer, name, counted)


def _with_collectives(wrapped, optimizer) -> None:
    """megatron-core's own syncs: the bucket groups' class methods, not the wrapped ones."""
    for group in wrapped.bucket_groups:
        del group.start_grad_sync, group.start_param_sync


def _megatron_default_adam(wrapped, optimizer) -> None:
    """torch's Adam as megatron-core builds it: no implementation named (on CPU: the single-tensor loop)."""
    for inner in optimizer.chained_optimizers:
        for group in inner.optimizer.param_groups:
            group["fused"] = group["foreach"] = None


def _train(hf_dir: Path, initial: dict, adjust: Callable | None, run_dir: Path | None = None) -> dict:
    from transformers import AutoConfig

    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.training.checkpoint import save_checkpoint
    from xr_nemo.training.loop import run_schedule
    from xr_nemo.training.setup import build_model, wrap_for_training

    config = SFTConfig()
    config.optim.lr = 1e-3
    model = build_model(AutoConfig.from_pretrained(hf_dir), config)
    model.load_state_dict(initial)
    wrapped, optimizer = wrap_for_training(model, config)
    if adjust is not None:
        adjust(wrapped, optimizer)
    losses, calls, after_first = [], Counter(), None
    _counting_collectives(calls)
    for _ in range(STEPS):
        wrapped.zero_grad_buffer()
        optimizer.zero_grad()
        (report,) = run_schedule(_forward_step, wrapped, [_batch()], forward_only=False)
        losses.append((report["loss"][0] / report["loss"][1]).item())
        optimizer.step()
        after_first = after_first or _trained(model)
    if run_dir is not None:
        save_checkpoint(run_dir, STEPS, model, optimizer, {"consumed_samples": 0}, hf_dir, None)
    return {
        "losses": losses,
        "params": _trained(model),
        "params_after_the_first_step": after_first,
        "collectives": dict(calls),
        "bucket_groups": len(wrapped.bucket_groups),
        "fused": _flags(optimizer),
    }


def _trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _flags(optimizer) -> set:
    return {
        (group["fused"], group["foreach"])
        for inner in optimizer.chained_optimizers
        for group in inner.optimizer.param_groups
    }


def _resumed_flags(hf_dir: Path, initial: dict, checkpoint: Path) -> set:
    from transformers import AutoConfig

    from xr_nemo.config.schema import SFTConfig
    from xr_nemo.training.checkpoint import load_checkpoint
    from xr_nemo.training.setup import build_model, wrap_for_training

    model = build_model(AutoConfig.from_pretrained(hf_dir), SFTConfig())
    model.load_state_dict(initial)
    _, optimizer = wrap_for_training(model, SFTConfig())
    load_checkpoint(checkpoint, model, optimizer)
    return _flags(optimizer)


def optimizer_worker(root: Path) -> dict:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    initialize(ParallelConfig(), seed=0)
    hf_dir = build_tiny_qwen25_vl(root / "hf", TinyQwen25VLSpec(num_layers=2))
    torch.manual_seed(0)
    initial = Qwen25VLModel(AutoConfig.from_pretrained(hf_dir)).state_dict()
    results = {
        "ours": _train(hf_dir, initial, None),
        "with the collectives": _train(hf_dir, initial, _with_collectives),
        "single-tensor Adam": _train(hf_dir, initial, _megatron_default_adam, root / "run"),
    }
    checkpoint = root / "run" / "checkpoints" / f"step_{STEPS}"
    results["resumed"] = {"fused": _resumed_flags(hf_dir, initial, checkpoint)}
    shutdown()
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    (outcome,) = run_distributed(optimizer_worker, 1, tmp_path_factory.mktemp("optimizer"))
    return outcome


def test_one_rank_skips_the_collectives_and_changes_no_bit(results):
    ours, reference = results["ours"], results["with the collectives"]
    groups = reference["bucket_groups"]
    expected = {"dist_reduce_scatter_func": STEPS * groups, "dist_all_gather_func": STEPS * groups}
    assert reference["collectives"] == expected
    assert ours["collectives"] == {}
    assert ours["losses"] == reference["losses"]
    assert ours["params"].keys() == reference["params"].keys()
    for name, value in ours["params"].items():
        assert torch.equal(value, reference["params"][name]), name


def test_fused_adam_stays_within_rounding_of_the_single_tensor_loop(results):
    """From the same gradients (the first step) the two kernels' weights differ by rounding. Later steps
    are compared by their losses only: a parameter whose gradient is itself rounding noise (the key
    bias: softmax ignores a shift shared by every key) takes ±lr-sized Adam steps that follow the noise,
    whichever kernel runs."""
    ours, single = results["ours"], results["single-tensor Adam"]
    assert ours["fused"] == {(True, False)} and single["fused"] == {(None, None)}
    assert ours["losses"][-1] < 0.9 * ours["losses"][0]  # the steps moved the weights
    first, expected = ours["params_after_the_first_step"], single["params_after_the_first_step"]
    for name, value in first.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-7, msg=name)
    assert ours["losses"] == pytest.approx(single["losses"], abs=1e-5)


def test_a_checkpoint_of_the_default_implementation_resumes_fused(results):
    assert results["resumed"]["fused"] == {(True, False)}


@pytest.mark.parametrize(("device", "skipped"), [("cpu", True), ("meta", False)])
def test_only_cpu_buffers_skip_their_one_rank_collectives(device, skipped):
    """Buffers elsewhere (on GPU: NCCL) keep megatron-core's own syncs; `meta` stands in for a GPU."""
    from types import SimpleNamespace

    from xr_nemo.training.optimizer import skip_one_rank_collectives

    def grad_sync():
        pass

    def param_sync():
        pass

    group = SimpleNamespace(
        ddp_config=SimpleNamespace(use_distributed_optimizer=True, num_distributed_optimizer_instances=1),
        intra_distributed_optimizer_instance_size=1,
        buckets=[SimpleNamespace(grad_data=torch.empty(4, device=device))],
        start_grad_sync=grad_sync,
        start_param_sync=param_sync,
    )
    skip_one_rank_collectives([SimpleNamespace(bucket_groups=[group], expert_parallel_bucket_groups=[])])
    assert (group.start_grad_sync is not grad_sync) == skipped
    assert (group.start_param_sync is not param_sync) == skipped


def test_clipping_scales_in_place_to_megatron_cores_values():
    """Clipping's scale (megatron-core's local `multi_tensor_scale` on CPU) gives the same bits with no
    tensor made on the way."""
    from megatron.core.optimizer import clip_grads
    from megatron.core.utils import local_multi_tensor_scale
    from torch.utils._python_dispatch import TorchDispatchMode

    from xr_nemo.training.optimizer import _scale_in_place, clip_in_place

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, 64, generator=generator), torch.randn(7, generator=generator)]
    expected = [g.clone() for g in grads]
    local_multi_tensor_scale(0, None, [expected, expected], 0.37)
    pointers = [g.data_ptr() for g in grads]
    with Ops() as ops:
        _scale_in_place(0, None, [grads, grads], 0.37)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))
    assert [g.data_ptr() for g in grads] == pointers and set(ops.seen) == {"aten.mul.out"}
    clip_in_place()
    assert clip_grads.multi_tensor_scale_impl is _scale_in_place  # no Transformer Engine or Apex here
