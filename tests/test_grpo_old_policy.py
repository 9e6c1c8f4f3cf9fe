"""With one update per rollout batch, π_old is the policy being updated: the step takes its
log-probabilities from the training forward pass, detached, instead of from a forward pass of their own.
On the tiny Qwen2.5-VL, one GRPO update (`GRPOStage._updates`, run by the loop's `run_updates`; KL and
truncated importance sampling on) is run both ways from the same weights: the path with the extra
forward pass is the reference, and the loss, every gradient and the reported metrics must equal it while
the policy's forward passes halve."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"]
VOCAB = 512
GROUPS, N, MICRO_BATCH = 2, 4, 3
TOLERANCE = 1e-6


def _hf_config():
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, tiny_config

    ids = {token: i for i, token in enumerate([*SPECIAL, "<|vision_end|>"])}
    return tiny_config(TinyQwen25VLSpec(num_layers=2), VOCAB, ids)


def _rollouts():
    """Two groups of N completions of different lengths with rewards that differ inside each group (so
    every advantage is nonzero) and engine log-probabilities off the policy's (so TIS weights vary)."""
    from xr_nemo.generation.engine import Completion
    from xr_nemo.grpo.prompts import PromptItem, PromptSet
    from xr_nemo.grpo.rollouts import Group, StepRollouts
    from xr_nemo.rewards.pool import Score

    generator = torch.Generator().manual_seed(3)
    prompts = PromptSet(
        [PromptItem(f"p{i}", "q", "a") for i in range(GROUPS)],
        [torch.randint(8, VOCAB, (length,), generator=generator).tolist() for length in (5, 9)],
    )
    groups = []
    for index in range(GROUPS):
        completions, scores = [], []
        for j in range(N):
            length = 3 + 2 * j + index
            ids = torch.randint(8, VOCAB, (length,), generator=generator).tolist()
            logprobs = (-6.0 - torch.rand(length, generator=generator)).tolist()
            completions.append(Completion(ids, logprobs, finished=j % 2 == 0))
            scores.append(Score(correct=float(j % 2), format=0.0, reward=float(j % 2) + 0.25 * j))
        groups.append(Group(index, completions, scores))
    rollouts = StepRollouts(
        kept=groups,
        kept_positions=list(range(GROUPS)),
        generated=groups,
        next_cursor=GROUPS,
        rounds=1,
        kept_total=GROUPS,
    )
    return prompts, rollouts


def _one_step(initial: dict, updates: int, old_pass: bool | None) -> dict:
    """`_updates`, run by the loop, from `initial` weights; `old_pass` forces the old-policy forward
    pass on (True) or leaves the choice to the step (None). Returns the metrics, the gradient the
    optimizer stepped with and the forward passes of the policy and the reference model."""
    from xr_nemo.config.schema import GRPOConfig
    from xr_nemo.grpo import run
    from xr_nemo.training.loop import Policy, run_updates
    from xr_nemo.training.setup import build_model, wrap_for_training

    config = GRPOConfig()
    config.rollout.n, config.trainer.micro_batch_size = N, MICRO_BATCH
    config.grpo.updates_per_rollout = updates
    models = []
    for _ in range(2):
        model = build_model(_hf_config(), config)
        model.load_state_dict(initial)
        models.append(model)
    model, reference = models[0], models[1].requires_grad_(False)
    wrapped, optimizer = wrap_for_training(model, config)
    calls = {"policy": 0, "reference": 0}
    for name, module in (("policy", model), ("reference", reference)):
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    gradients: list[dict[str, torch.Tensor]] = []
    step = optimizer.step

    def recording_step():
        named = model.named_parameters()
        gradients.append({n: p.main_grad.detach().clone() for n, p in named if p.requires_grad})
        return step()

    optimizer.step = recording_step
    prompts, rollouts = _rollouts()
    policy = Policy(model, wrapped, optimizer, Path("."), Path("."), None)
    stage = run.GRPOStage(config, policy, reference, SimpleNamespace(prompts=prompts), pad_id=0)
    decide = run.needs_old_policy_pass
    if old_pass is not None:
        run.needs_old_policy_pass = lambda grpo: old_pass
    try:
        updates = stage._updates(rollouts)
    finally:
        run.needs_old_policy_pass = decide
    reports = run_updates(policy, updates, stage.summed_reports, lambda forward_step: forward_step)
    metrics = {**run._update_metrics(reports.sums["report"]), "grad_norm": reports.grad_norm}
    return {"metrics": metrics, "gradients": gradients, "calls": calls}


def old_policy_worker() -> dict:
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    initialize(ParallelConfig(), seed=0)
    torch.manual_seed(0)
    initial = Qwen25VLModel(_hf_config()).state_dict()
    results = {
        "with the extra forward pass": _one_step(initial, updates=1, old_pass=True),
        "without": _one_step(initial, updates=1, old_pass=None),
        "two updates": _one_step(initial, updates=2, old_pass=None),
    }
    shutdown()
    return results


@pytest.fixture(scope="module")
def results() -> dict:
    (outcome,) = run_distributed(old_policy_worker, 1)
    return outcome


def test_one_update_skips_the_old_policy_pass_and_keeps_loss_and_gradient(results):
    reference, ours = results["with the extra forward pass"], results["without"]
    micro_batches = -(-GROUPS * N // MICRO_BATCH)
    assert reference["calls"] == {"policy": 2 * micro_batches, "reference": micro_batches}
    assert ours["calls"] == {"policy": micro_batches, "reference": micro_batches}

    (expected,), (gradient,) = reference["gradients"], ours["gradients"]
    assert gradient.keys() == expected.keys()
    assert sum(g.norm() ** 2 for g in expected.values()) > 1e-6  # a gradient that can differ
    for name, value in gradient.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=TOLERANCE, msg=name)
    assert reference["metrics"]["loss"] != 0
    for key, value in reference["metrics"].items():
        assert ours["metrics"][key] == pytest.approx(value, abs=TOLERANCE), key
    assert ours["metrics"]["clip_fraction"] == 0 and ours["metrics"]["kl"] == 0  # π = π_old = π_ref


def test_several_updates_still_take_the_old_policy_pass(results):
    """The second update starts from weights the first one moved, so π_old needs its own pass: once over
    every micro-batch of the rollout batch, then one forward pass per micro-batch of each update."""
    two = results["two updates"]
    micro_batches = 2 * -(-(GROUPS * N // 2) // MICRO_BATCH)
    assert two["calls"] == {"policy": 2 * micro_batches, "reference": micro_batches}
    assert len(two["gradients"]) == 2
