"""megatron-core on CPU/gloo: every parallel layout reproduces the single-process loss and gradients.

The reference is a plain single-process forward/backward of the same tiny GPT on the whole batch.
Each layout starts from the reference's weights (sharded per rank) and must give the same loss and the
same gradients (each rank's shard of them), max abs diff ≤ 1e-5 in fp32.
"""

from __future__ import annotations

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

TOL = 1e-5
GLOBAL_BATCH = 8
MICRO_BATCHES = 4
SEED = 7


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from helpers.tiny_gpt import SEQ_LEN, VOCAB_SIZE

    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, VOCAB_SIZE, (GLOBAL_BATCH, SEQ_LEN + 1), generator=generator)
    positions = torch.arange(SEQ_LEN).expand(GLOBAL_BATCH, -1)
    return tokens[:, :-1], positions, tokens[:, 1:]


def _build(parallel, **config_overrides):
    from xr_nemo.distributed import initialize

    from helpers.tiny_gpt import build_tiny_gpt, tiny_gpt_config

    initialize(parallel, seed=SEED)
    return build_tiny_gpt(tiny_gpt_config(sequence_parallel=parallel.sequence_parallel, **config_overrides))


def reference_worker() -> dict:
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import shutdown

    model = _build(ParallelConfig())
    with torch.no_grad():  # norms away from 1 so that their sharding and gradients are exercised
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    inputs, positions, labels = _batch()
    loss = model(inputs, positions, None, labels=labels).mean()
    loss.backward()
    result = {
        "loss": loss.item(),
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }
    shutdown()
    return result


def _grad_diffs(model, reference: dict, grads: dict[str, torch.Tensor]) -> dict[str, float]:
    from helpers.tiny_gpt import sharded_reference

    expected = sharded_reference(model, reference["grads"])
    return {name: (grads[name] - expected[name]).abs().max().item() for name in expected}


def model_parallel_worker(reference: dict, parallel, num_microbatches: int) -> dict:
    """Tensor and/or pipeline parallel, micro-batches through megatron-core's schedule (1F1B for PP>1),
    gradients reduced by megatron-core's DDP and `finalize_model_grads` as in training."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from xr_nemo.distributed import shutdown

    from helpers.tiny_gpt import SEQ_LEN, load_full_state_dict

    model = _build(parallel)
    load_full_state_dict(model, reference["weights"])
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model
    )
    inputs, positions, labels = _batch()
    micro = GLOBAL_BATCH // num_microbatches
    batches = iter(
        [
            (inputs[i : i + micro], positions[i : i + micro], labels[i : i + micro])
            for i in range(0, GLOBAL_BATCH, micro)
        ]
    )

    def forward_step(data_iterator, model):
        tokens, pos, lab = next(data_iterator)
        output = model(tokens, pos, None, labels=lab)

        def loss_func(per_token_loss):
            loss = per_token_loss.mean()
            return loss, {"loss": loss.detach()}

        return output, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=batches,
        model=[ddp],
        num_microbatches=num_microbatches,
        seq_length=SEQ_LEN,
        micro_batch_size=micro,
        forward_only=False,
    )
    finalize_model_grads([ddp])
    # The schedule reports each micro-batch's loss already divided by the number of micro-batches.
    loss = sum(item["loss"] for item in losses).item() if parallel_state.is_pipeline_last_stage() else None
    diffs = _grad_diffs(model, reference, {n: p.main_grad for n, p in model.named_parameters()})
    shutdown()
    return {"loss": loss, "grad_diffs": diffs}


def _reference_adam_step(reference: dict, learning_rate: float) -> dict[str, torch.Tensor]:
    """One torch AdamW step (megatron-core's CPU optimizer) on the reference weights and gradients."""
    params = {n: torch.nn.Parameter(w.clone()) for n, w in reference["weights"].items()}
    for name, param in params.items():
        param.grad = reference["grads"][name].clone()
    torch.optim.AdamW(params.values(), lr=learning_rate, eps=learning_rate, weight_decay=0.0).step()
    return {n: p.detach() for n, p in params.items()}


def data_parallel_worker(reference: dict, learning_rate: float) -> dict:
    """DP=2 with megatron-core's DDP and distributed optimizer; each rank takes half the batch.

    With Adam's eps equal to the learning rate, a first step moves each weight by about its gradient
    (lr·g / (|g| + eps) ≈ g for small g), so the updated weights carry the averaged, reduce-scattered
    and all-gathered gradients; they are compared with the same step taken on the reference.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import shutdown

    from helpers.tiny_gpt import load_full_state_dict, sharded_reference

    model = _build(ParallelConfig(use_distributed_optimizer=True))
    load_full_state_dict(model, reference["weights"])
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=True),
        module=model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=learning_rate,
            adam_eps=learning_rate,
            weight_decay=0.0,
            use_distributed_optimizer=True,
            clip_grad=0.0,
        ),
        [ddp],
    )
    rank = parallel_state.get_data_parallel_rank()
    half = GLOBAL_BATCH // parallel_state.get_data_parallel_world_size()
    inputs, positions, labels = (t[rank * half : (rank + 1) * half] for t in _batch())
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    loss = ddp(inputs, positions, None, labels=labels).mean()
    loss.backward()
    finalize_model_grads([ddp])
    update_ok, _, _ = optimizer.step()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= parallel_state.get_data_parallel_world_size()
    expected = sharded_reference(model, _reference_adam_step(reference, learning_rate))
    moved = max(
        (reference["weights"][n] - p.detach()).abs().max().item() for n, p in model.named_parameters()
    )
    diffs = {n: (p.detach() - expected[n]).abs().max().item() for n, p in model.named_parameters()}
    shutdown()
    return {"loss": global_loss.item(), "grad_diffs": diffs, "update_ok": update_ok, "moved": moved}


@pytest.fixture(scope="module")
def reference() -> dict:
    return run_distributed(reference_worker, 1)[0]


def _assert_matches(results: list[dict], reference: dict) -> None:
    losses = [r["loss"] for r in results if r["loss"] is not None]
    assert losses, "no rank reported a loss"
    for loss in losses:
        assert abs(loss - reference["loss"]) <= TOL, (loss, reference["loss"])
    for rank, result in enumerate(results):
        worst = max(result["grad_diffs"], key=result["grad_diffs"].get)
        assert result["grad_diffs"][worst] <= TOL, (
            f"rank {rank}: {worst} differs by {result['grad_diffs'][worst]}"
        )
        assert len(result["grad_diffs"]) > 0


def test_parallel_tp1_microbatched_schedule_matches_single_process(reference):
    from xr_nemo.config import ParallelConfig

    results = run_distributed(model_parallel_worker, 1, reference, ParallelConfig(), MICRO_BATCHES)
    _assert_matches(results, reference)


def test_parallel_tp2_matches_single_process(reference):
    from xr_nemo.config import ParallelConfig

    results = run_distributed(model_parallel_worker, 2, reference, ParallelConfig(tensor_parallel=2), 1)
    _assert_matches(results, reference)


def test_parallel_tp2_sequence_parallel_matches_single_process(reference):
    from xr_nemo.config import ParallelConfig

    parallel = ParallelConfig(tensor_parallel=2, sequence_parallel=True)
    results = run_distributed(model_parallel_worker, 2, reference, parallel, 1)
    _assert_matches(results, reference)


def test_parallel_pp2_1f1b_matches_single_process(reference):
    from xr_nemo.config import ParallelConfig

    parallel = ParallelConfig(pipeline_parallel=2)
    results = run_distributed(model_parallel_worker, 2, reference, parallel, MICRO_BATCHES)
    _assert_matches(results, reference)
    assert sum(len(r["grad_diffs"]) for r in results) == len(reference["grads"])


def test_parallel_dp2_distributed_optimizer_matches_single_process(reference):
    results = run_distributed(data_parallel_worker, 2, reference, 10.0)
    assert all(r["update_ok"] and r["moved"] > 1e-3 for r in results)
    _assert_matches(results, reference)
