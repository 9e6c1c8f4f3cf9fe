"""The loop owns the step: a stage that never sees the optimizer supplies forward steps, micro-batches and
the data it drew, and the loop zeroes the gradients, runs the schedule and steps the optimizer once per
update. Epochs are counted in the data the steps drew: a step that draws more than planned (GRPO's
dynamic sampling) brings the end of the epoch, the epoch metric and the epoch-decay LR earlier in steps.
On the tiny Qwen2.5-VL, one CPU process."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"]
VOCAB, LENGTH = 512, 16
EPOCH_SIZE, PLANNED_PER_STEP = 8, 2
# data each step draws: the second draws 5, not 2 (as dynamic sampling's extra rounds do)
DRAWS = [2, 5, 2, 2, 2, 2, 2, 2, 2]
LR = 1e-3


def _hf_config():
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, tiny_config

    ids = {token: i for i, token in enumerate([*SPECIAL, "<|vision_end|>"])}
    return tiny_config(TinyQwen25VLSpec(num_layers=2), VOCAB, ids)


def _batch(step: int) -> dict[str, torch.Tensor]:
    tokens = torch.randint(8, VOCAB, (1, LENGTH + 1), generator=torch.Generator().manual_seed(step))
    return dict(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=torch.ones(1, LENGTH),
        position_ids=torch.arange(LENGTH).expand(3, 1, LENGTH),
    )


def _forward_step(data_iterator, model):
    from xr_nemo.sft.step import loss_func

    batch = next(data_iterator)
    per_token_loss = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return per_token_loss, partial(loss_func, batch["loss_mask"])


class _Stage:
    """Forward steps and data, and nothing of the policy: no model, no optimizer."""

    name = "fake"
    epoch_size = EPOCH_SIZE
    planned_steps_per_epoch = EPOCH_SIZE // PLANNED_PER_STEP
    summed_reports: ClassVar[dict[str, int]] = {"loss": 2}

    def __init__(self, updates: int) -> None:
        self.updates = updates

    def prepare(self, step, hooks):
        from xr_nemo.training.loop import StepPlan, Update

        return StepPlan([Update(_forward_step, [_batch(step)]) for _ in range(self.updates)], DRAWS[step])

    def metrics(self, step, plan, reports) -> dict[str, float]:
        loss_sum, tokens = reports.sums["loss"].tolist()
        return {"loss": loss_sum / tokens, "loss_tokens": tokens, "updates": len(reports.grad_norms)}

    def progress(self, values):
        return {}

    def state(self):
        return {}

    def restore(self, state):
        raise AssertionError("nothing to resume")


def _train(run_dir: Path, updates: int, epochs: int = 1, max_steps: int | None = None) -> dict:
    """`train` with `_Stage`; the optimizer calls it saw, the metrics and whether the weights moved."""
    from xr_nemo.config.schema import TrainingConfig
    from xr_nemo.training.loop import Policy, train
    from xr_nemo.training.metrics import read_metrics
    from xr_nemo.training.setup import build_model, wrap_for_training

    run_dir.mkdir()  # as `prepare_run_dir` leaves it
    config = TrainingConfig()
    config.run.dir, config.optim.lr = str(run_dir), LR
    config.scheduler.name, config.scheduler.epoch_decay = "epoch_decay", 0.5
    config.trainer.epochs, config.trainer.max_steps, config.trainer.progress = epochs, max_steps, False
    config.checkpoint.every_steps, config.checkpoint.at_end = None, False
    model = build_model(_hf_config(), config)
    wrapped, optimizer = wrap_for_training(model, config)
    calls: list[str] = []
    for owner, name in ((wrapped, "zero_grad_buffer"), (optimizer, "zero_grad"), (optimizer, "step")):
        original = getattr(owner, name)
        setattr(owner, name, lambda original=original, name=name: calls.append(name) or original())
    before = [p.detach().clone() for p in model.parameters()]
    policy = Policy(model, wrapped, optimizer, Path("."), Path("."), None)
    last_step = train(config, policy, _Stage(updates))
    moved = any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    return {"last_step": last_step, "calls": calls, "rows": read_metrics(run_dir), "moved": moved}


def loop_worker(root: str) -> dict:
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown

    initialize(ParallelConfig(), seed=0)
    results = {
        "epochs": _train(Path(root) / "epochs", updates=1, epochs=2),
        "two updates": _train(Path(root) / "two-updates", updates=2, max_steps=2),
    }
    shutdown()
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    (outcome,) = run_distributed(loop_worker, 1, str(tmp_path_factory.mktemp("loop")))
    return outcome


def test_the_loop_alone_steps_the_optimizer_of_a_stage_that_never_sees_it(results):
    one, two = results["epochs"], results["two updates"]
    assert one["moved"] and two["moved"]
    assert one["calls"] == ["zero_grad_buffer", "zero_grad", "step"] * one["last_step"]
    assert two["calls"] == ["zero_grad_buffer", "zero_grad", "step"] * 4  # 2 steps × 2 updates
    assert [row["updates"] for row in two["rows"]] == [2, 2]
    # the loss report is summed over the updates: each update's micro-batch holds LENGTH loss tokens
    assert [row["loss_tokens"] for row in two["rows"]] == [2 * LENGTH, 2 * LENGTH]
    assert all(row["grad_norm"] > 0 for row in one["rows"] + two["rows"])


def test_epochs_are_counted_in_the_data_the_steps_drew(results):
    """2 epochs of 8 are planned as 8 steps of 2; the second step draws 5, so the data (2 + 5 + 2 … ≥ 16)
    ends after 7 steps, and epoch 1 starts at step 4 (data 9), not 5: so does the LR's decay."""
    one = results["epochs"]
    assert one["last_step"] == 7
    assert [row["epoch"] for row in one["rows"]] == [0, 0, 0, 1, 1, 1, 1]
    assert [row["lr"] for row in one["rows"]] == [LR] * 3 + [LR * 0.5] * 4
