"""The forward steps compute logits only at the scored positions (`logits_only_at`): GRPO's at the
response tokens, SFT's at the assistant tokens of packed rows. GRPO's policy loss, its report, every
gradient and the log-probabilities a forward-only pass reports, and SFT's loss and gradients, equal those
from logits at every position (the same steps on a plain callable, which the hook does not touch) within
1e-6, at TP=1, TP=2 and TP=2 with sequence parallelism; the model's output holds one row of logits per
scored position only."""

from __future__ import annotations

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

TOLERANCE = 1e-6
TEMPERATURE = 0.7
PROMPTS, RESPONSES = (5, 12, 9), (10, 6, 14)


def _batch(vocab: int):
    """Three right-padded rows of different prompt and response lengths, with advantages, engine and
    reference log-probabilities that vary per token."""
    from xr_nemo.generation.engine import Completion
    from xr_nemo.grpo.algorithm import loss_weights
    from xr_nemo.grpo.batch import Sample, microbatch

    generator = torch.Generator().manual_seed(5)
    samples = []
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        ids = torch.randint(1, vocab, (prompt + response,), generator=generator).tolist()
        logprobs = (-4.0 - torch.rand(response, generator=generator)).tolist()
        samples.append(Sample(ids[:prompt], Completion(ids[prompt:], logprobs), advantage=row - 0.8))
    batch = microbatch(samples, pad_id=0, multiple_of=2)
    batch["loss_weights"], batch["loss_counts"] = loss_weights(batch["loss_mask"], "token")
    batch["ref_logprobs"] = batch["rollout_logprobs"] + 0.3 * torch.rand(
        batch["labels"].shape, generator=generator
    )
    return batch


def _run(model, batch: dict, through_hook: bool) -> dict:
    """`logprob_step` then `policy_step` on `batch`, with the hook (the model itself) or without it (the
    model behind a plain function): their outputs, the loss, its report and every gradient."""
    from xr_nemo.config.schema import GRPOAlgorithmConfig
    from xr_nemo.grpo.step import logprob_step, policy_step

    called = model if through_hook else lambda *args, **kwargs: model(*args, **kwargs)
    config = GRPOAlgorithmConfig(kl_coef=0.05, entropy_coef=0.01)
    output, report_logprobs = logprob_step(TEMPERATURE, iter([dict(batch)]), called)
    logprobs = report_logprobs(output)[2]["logprobs"]
    model.zero_grad()
    output, loss_func = policy_step(config, TEMPERATURE, iter([dict(batch)]), called)
    loss, _, report = loss_func(output)
    loss.backward()
    return {
        "output_shape": tuple(output.shape),
        "logprobs": logprobs * batch["loss_mask"],
        "loss": loss.detach(),
        "report": report["report"],
        "grads": {name: param.grad.clone() for name, param in model.named_parameters()},
    }


def _packed_sft_batch() -> dict:
    """Two packed rows of samples whose first tokens (the question) carry no loss."""
    import numpy as np

    from xr_nemo.data.packing import collate

    from helpers.tiny_gpt import VOCAB_SIZE

    generator = np.random.default_rng(6)
    rows = [[(9, 7), (6, 11)], [(4, 15)]]  # (question, answer) lengths
    packed = [
        [
            (
                generator.integers(1, VOCAB_SIZE, question + answer),
                np.array([0.0] * question + [1.0] * answer),
            )
            for question, answer in row
        ]
        for row in rows
    ]
    batch = collate(packed, pad_id=0, multiple_of=2)
    batch["position_ids"] = batch["position_ids"][0]  # the tiny GPT's plain rope, which cannot take
    batch["packed_seq_params"] = None  # packed boundaries: causal over the row, alike on both paths
    return batch


def _run_sft(model, batch: dict, through_hook: bool) -> dict:
    from xr_nemo.sft.step import forward_step

    called = model if through_hook else lambda *args, **kwargs: model(*args, **kwargs)
    model.zero_grad()
    per_token_loss, loss_func = forward_step(iter([dict(batch)]), called)
    loss, tokens, _ = loss_func(per_token_loss)
    loss.backward()
    return {
        "per_token_loss": per_token_loss.detach() * batch["loss_mask"],
        "loss": loss.detach(),
        "tokens": int(tokens),
        "grads": {name: param.grad.clone() for name, param in model.named_parameters()},
    }


def scored_positions_worker(parallel) -> dict:
    from xr_nemo.distributed import initialize, shutdown

    from helpers.tiny_gpt import VOCAB_SIZE, build_tiny_gpt, tiny_gpt_config

    initialize(parallel, seed=0)
    torch.manual_seed(0)
    model = build_tiny_gpt(
        tiny_gpt_config(num_layers=2, sequence_parallel=parallel.sequence_parallel), tied=True
    )
    with torch.no_grad():  # away from the initialisation (norms at 1); replicated tensors alike on every rank
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    batch = _batch(VOCAB_SIZE)
    result = {"with": _run(model, batch, True), "without": _run(model, batch, False)}
    sft_batch = _packed_sft_batch()
    result["sft"] = {"with": _run_sft(model, sft_batch, True), "without": _run_sft(model, sft_batch, False)}
    result["scored"] = int(batch["loss_mask"].sum())
    result["local_vocab"] = VOCAB_SIZE // parallel.tensor_parallel
    shutdown()
    return result


@pytest.mark.parametrize(
    ("tensor_parallel", "sequence_parallel"),
    [(1, False), (2, False), (2, True)],
    ids=["tp1", "tp2", "tp2-sp"],
)
def test_logits_at_response_positions_only_keep_loss_gradients_and_logprobs(
    tensor_parallel, sequence_parallel
):
    from xr_nemo.config import ParallelConfig

    parallel = ParallelConfig(tensor_parallel=tensor_parallel, sequence_parallel=sequence_parallel)
    for result in run_distributed(scored_positions_worker, tensor_parallel, parallel):
        ours, full = result["with"], result["without"]
        assert ours["output_shape"] == (1, result["scored"], result["local_vocab"])
        rows, seq, _ = full["output_shape"]
        assert rows == len(PROMPTS) and rows * seq > 2 * result["scored"]  # most positions unscored
        assert full["logprobs"].abs().sum() > 0 and full["loss"] != 0
        torch.testing.assert_close(ours["logprobs"], full["logprobs"], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(ours["loss"], full["loss"], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(
            ours["report"], full["report"], rtol=1e-6, atol=TOLERANCE
        )  # sums: relative
        assert ours["grads"].keys() == full["grads"].keys()
        assert sum(g.norm() for g in full["grads"].values()) > 1e-3
        for name, grad in ours["grads"].items():
            torch.testing.assert_close(grad, full["grads"][name], rtol=0, atol=TOLERANCE, msg=name)
        ours, full = result["sft"]["with"], result["sft"]["without"]
        assert ours["tokens"] == full["tokens"] == 7 + 11 + 15  # every answer token is a label
        torch.testing.assert_close(ours["per_token_loss"], full["per_token_loss"], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(ours["loss"], full["loss"], rtol=1e-6, atol=TOLERANCE)  # a sum: relative
        for name, grad in ours["grads"].items():
            torch.testing.assert_close(grad, full["grads"][name], rtol=0, atol=TOLERANCE, msg=name)
