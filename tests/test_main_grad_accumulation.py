"""The word embedding's and output layer's weight gradients accumulated straight into DDP's buffer
(`xr_nemo.training.main_grad`): the same losses and gradients as megatron-core's own path, in every
parallel layout, and no vocabulary-sized gradient tensor made on the way.

Each worker runs one training step of a tiny GPT through megatron-core's schedule and DDP twice on the
same weights, first as megatron-core does it, then with the accumulation installed, and compares the
losses and every parameter's `main_grad`. While each backward pass runs, a dispatch mode records the
operators that create a new tensor of a vocabulary-sized weight's shape.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xr_nemo.distributed.local_launch import run_distributed

VOCAB = 160  # no other weight of the tiny GPT has a dimension of this size
SEQ_LEN, BATCH, SEED = 32, 4, 11


class _VocabSizedTensors(TorchDispatchMode):
    """The operators that return a new tensor (not a view, not in place) of one of `shapes`."""

    def __init__(self, shapes: set[tuple[int, ...]]) -> None:
        super().__init__()
        self.shapes, self.made = shapes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        fresh = not schema.name.endswith("_") and not any(a.alias_info for a in schema.returns)
        if fresh and isinstance(out, torch.Tensor) and tuple(out.shape) in self.shapes:
            self.made.append(str(func))
        return out


def _model(parallel, tied: bool):
    from xr_nemo.distributed import initialize

    from helpers.tiny_gpt import build_tiny_gpt, tiny_gpt_config

    initialize(parallel, seed=SEED)
    return build_tiny_gpt(tiny_gpt_config(sequence_parallel=parallel.sequence_parallel), VOCAB, tied)


def _step(ddp, microbatches: int, record: set[tuple[int, ...]]) -> tuple[float | None, list[str]]:
    """One step's gradients into `ddp`'s buffers (finalized as in training); the summed loss on the last
    pipeline stage, and the recorded operators."""
    from megatron.core import parallel_state
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=generator)
    positions = torch.arange(SEQ_LEN).expand(BATCH, -1)
    size = BATCH // microbatches
    batches = iter([(tokens[i : i + size], positions[i : i + size]) for i in range(0, BATCH, size)])

    def forward_step(data_iterator, model):
        ids, pos = next(data_iterator)
        output = model(ids[:, :-1], pos, None, labels=ids[:, 1:])
        return output, lambda per_token: (per_token.sum(), {"loss": per_token.sum().detach()})

    ddp.zero_grad_buffer()
    mode = _VocabSizedTensors(record)
    with mode:
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=batches,
            model=[ddp],
            num_microbatches=microbatches,
            seq_length=SEQ_LEN,
            micro_batch_size=size,
            forward_only=False,
        )
    finalize_model_grads([ddp])
    loss = sum(o["loss"] for o in outputs).item() if parallel_state.is_pipeline_last_stage() else None
    return loss, mode.made


def worker(parallel, tied: bool, microbatches: int, overlap: bool = False) -> dict:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from xr_nemo.distributed import shutdown
    from xr_nemo.training.main_grad import accumulate_vocab_gradients_in_place

    model = _model(parallel, tied)
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap),
        module=model,
    )
    vocab_shapes = {
        tuple(p.shape) for p in model.parameters() if p.shape[0] == VOCAB // parallel.tensor_parallel
    }
    loss_before, made_before = _step(ddp, microbatches, vocab_shapes)
    before = {n: p.main_grad.clone() for n, p in model.named_parameters()}
    installed = accumulate_vocab_gradients_in_place(model, ddp.ddp_config)
    loss_after, made_after = _step(ddp, microbatches, vocab_shapes)
    diffs = {n: (p.main_grad - before[n]).abs().max().item() for n, p in model.named_parameters()}
    equal = all(torch.equal(p.main_grad, before[n]) for n, p in model.named_parameters())
    largest = max(p.main_grad.abs().max().item() for p in model.parameters())
    shutdown()
    return {
        "losses": (loss_before, loss_after),
        "diffs": diffs,
        "equal": equal,
        "largest": largest,
        "installed": installed,
        "made": (made_before, made_after),
    }


def _check(results: list[dict], exact: bool) -> None:
    for rank, result in enumerate(results):
        before, after = result["losses"]
        assert before == after, (rank, before, after)
        assert result["largest"] > 1e-3  # gradients that are there to compare
        worst = max(result["diffs"], key=result["diffs"].get)
        assert result["diffs"][worst] <= 1e-6 * result["largest"], (rank, worst, result["diffs"][worst])
        if exact:
            assert result["equal"], (rank, worst, result["diffs"][worst])
        assert result["installed"] >= 1
        made_before, made_after = result["made"]
        assert made_before, "megatron-core's own path makes vocabulary-sized gradients: the probe sees none"
        assert made_after == [], (rank, made_after)


def _parallel(**kwargs):
    from xr_nemo.config import ParallelConfig

    return ParallelConfig(**kwargs)


@pytest.mark.parametrize("tied", [True, False])
def test_one_process_one_microbatch_is_bit_exact(tied):
    _check(run_distributed(worker, 1, _parallel(), tied, 1), exact=True)


def test_one_process_microbatches_agree_within_rounding():
    _check(run_distributed(worker, 1, _parallel(), True, 4), exact=False)


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_tensor_parallel(sequence_parallel):
    parallel = _parallel(tensor_parallel=2, sequence_parallel=sequence_parallel)
    _check(run_distributed(worker, 2, parallel, True, 1), exact=True)


def test_pipeline_parallel_tied_across_stages():
    results = run_distributed(worker, 2, _parallel(pipeline_parallel=2), True, 4)
    _check(results, exact=False)
    assert [r["installed"] for r in results] == [
        1,
        1,
    ]  # the embedding on one stage, the output layer on the other


def test_not_installed_when_ddp_overlaps_its_reduction():
    (result,) = run_distributed(worker, 1, _parallel(), True, 1, True)
    assert result["installed"] == 0
    assert result["equal"] and result["made"][1], "megatron-core's own path runs unchanged"


def test_no_buffer_no_change():
    """Without DDP (a reference model, inference) or without gradients, megatron-core's path runs."""
    (result,) = run_distributed(no_buffer_worker, 1)
    assert result == {"grad_enabled_made": True, "weights_have_grads": True, "no_grad_equal": True}


def no_buffer_worker() -> dict:
    from megatron.core.distributed import DistributedDataParallelConfig

    from xr_nemo.distributed import shutdown
    from xr_nemo.training.main_grad import accumulate_vocab_gradients_in_place

    model = _model(_parallel(), tied=True)
    assert accumulate_vocab_gradients_in_place(model, DistributedDataParallelConfig()) == 2
    ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(SEQ_LEN).expand(2, -1)
    weight = model.shared_embedding_or_output_weight()
    mode = _VocabSizedTensors({tuple(weight.shape)})
    with mode:
        model(ids, positions, None, labels=ids).sum().backward()
    with torch.no_grad():
        logits = model(ids, positions, None)
    model.embedding.word_embeddings.forward = type(model.embedding.word_embeddings).forward.__get__(
        model.embedding.word_embeddings
    )
    del model.output_layer._forward_impl  # megatron-core's own, from the class
    with torch.no_grad():
        expected = model(ids, positions, None)
    shutdown()
    return {
        "grad_enabled_made": bool(mode.made),
        "weights_have_grads": weight.grad is not None and weight.grad.abs().sum().item() > 0,
        "no_grad_equal": torch.equal(logits, expected),
    }
