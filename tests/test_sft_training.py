"""SFT end to end on the tiny model: the loss falls and the export carries the training; with a fixed
number of samples per step, TP=2, PP=2, CP=2 and DP=2 (a rank making up a step with an empty sequence)
follow the single-process loss curve, and a resumed run continues it exactly; kill -9 then resume gives
the uninterrupted run's losses exactly; packed and unpacked training give the same losses on the same
samples."""

import os
import subprocess
import sys
import time

import pytest

from xr_nemo.distributed.local_launch import run_distributed

from helpers import processes

pytestmark = pytest.mark.slow


def sft_worker(overrides: list[str]) -> list[float] | None:
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.sft.run import run_sft
    from xr_nemo.training.metrics import read_metrics

    config = apply_overrides(load_recipe("tiny_cpu", "sft"), overrides)
    run_sft(config)
    return [row["loss"] for row in read_metrics(config.run.dir)] if int(os.environ["RANK"]) == 0 else None


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny HF model and its imported checkpoint, shared by every run."""
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    root = tmp_path_factory.mktemp("sft")
    hf_dir = build_tiny_qwen25_vl(root / "hf", TinyQwen25VLSpec(num_kv_heads=2))
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    return root, [f"model.hf_dir={hf_dir}", f"model.checkpoint={checkpoint}", "trainer.progress=false"]


def run(base, world_size: int, name: str, *overrides: str) -> list[float]:
    root, common = base
    args = [*common, f"run.dir={root / name}", f"data.cache_dir={root / 'cache'}", *overrides]
    return run_distributed(sft_worker, world_size, args)[0]


def test_loss_falls_and_the_export_carries_the_training(base):
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from xr_nemo.data.conversation import prepare
    from xr_nemo.data.records import read_records
    from xr_nemo.data.tokenize import tokenize_messages

    losses = run(
        base,
        1,
        "overfit",
        "data.max_samples=4",
        "data.packing=false",
        "trainer.global_batch_size=4",
        "trainer.epochs=30",
        "scheduler.name=constant",
        "export.hf=true",
        "checkpoint.every_steps=null",
    )
    assert len(losses) == 30
    assert losses[-1] < 0.3 * losses[0], losses

    root, _ = base
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    from xr_nemo.recipes.tiny_cpu import SAMPLE_DATA

    record = next(iter(read_records(str(SAMPLE_DATA))))
    ids, mask = tokenize_messages(tokenizer, prepare(record, "auto"))
    ids = torch.tensor([ids])
    labels = torch.where(torch.tensor([mask]), ids, -100)  # the assistant tokens, as trained

    def lm_loss(directory):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory).eval()
        with torch.no_grad():
            return model(input_ids=ids, labels=labels).loss.item()

    assert lm_loss(root / "overfit" / "hf") < 0.5 * lm_loss(root / "hf")


# 16 samples, 5 per step: steps of 5, 5, 5 and 1 (one sequence: under DP=2, rank 1 gets an empty one)
PARITY_STEPS = [
    "data.max_samples=16",
    "trainer.global_batch_size=null",
    "trainer.global_batch_samples=5",
    "trainer.max_steps=4",
    "checkpoint.every_steps=null",
]
SLOW_RANK_1 = ["fault_tolerance.inject_fault=slow", "fault_tolerance.inject_on_rank=1"]


@pytest.fixture(scope="module")
def single_process(base):
    return run(base, 1, "single", *PARITY_STEPS)


def test_every_step_holds_the_global_batch_samples_whatever_their_lengths(base, single_process):
    """ceil(16 / 5) = 4 steps make the epoch, the last holding the rest; the tokens reported are those of
    the 16 samples, each once."""
    from xr_nemo.config.schema import DataConfig
    from xr_nemo.data.tokenize import tokenize_dataset
    from xr_nemo.recipes.tiny_cpu import SAMPLE_DATA
    from xr_nemo.training.metrics import read_metrics

    root, _ = base
    rows = read_metrics(root / "single")
    assert [(row["samples"], row["epoch"]) for row in rows] == [(5, 0), (5, 0), (5, 0), (1, 0)]
    data = DataConfig(train=str(SAMPLE_DATA), max_samples=16, max_length=1024, num_workers=1)
    dataset = tokenize_dataset(str(SAMPLE_DATA), "train", root / "hf", data, root / "cache", progress=False)
    assert sum(row["tokens"] for row in rows) == int((dataset.lengths - 1).sum())
    assert all(0 < row["loss_tokens"] < row["tokens"] for row in rows)


TP2_SP_CP2 = ["parallel.tp=2", "parallel.sp=true", "parallel.cp=2"]


@pytest.mark.parametrize(
    ("world", "layout", "drill"),
    [
        (2, ["parallel.tp=2"], []),
        (2, ["parallel.pp=2"], []),
        (2, ["parallel.cp=2"], []),
        (4, TP2_SP_CP2, []),
        (4, ["parallel.pp=2", "parallel.cp=2"], []),
        (2, [], SLOW_RANK_1),
    ],
    ids=["tp2", "pp2", "cp2", "tp2-sp-cp2", "pp2-cp2", "dp2-with-a-slow-rank"],
)
def test_parallel_layouts_follow_the_single_process_loss_curve(base, single_process, world, layout, drill):
    """Also the straggler report, every 2 steps: no rank is slow, except rank 1 when a drill makes its
    forward passes 3× as long (which changes no number) over steps where the ranks hold equal work.
    Timings are judged only when every rank has a core of its own."""
    from xr_nemo.training.metrics import read_metrics

    name = "-".join(item.split("=")[0].split(".")[-1] for item in layout) or "dp"
    parallel = run(
        base, world, f"parallel-{name}", *PARITY_STEPS, *layout, *drill, "stragglers.report_every=2"
    )
    assert parallel == pytest.approx(single_process, abs=2e-5, rel=0)
    # the gradients too (Adam hides a uniformly scaled gradient from the losses; clipping does not)
    root, _ = base
    rows = read_metrics(root / f"parallel-{name}")
    single = read_metrics(root / "single")
    assert [row["grad_norm"] for row in rows] == pytest.approx([row["grad_norm"] for row in single], rel=1e-4)
    counts = ("samples", "tokens", "loss_tokens", "consumed_samples")
    assert [[row[key] for key in counts] for row in rows] == [[row[key] for key in counts] for row in single]

    reports = [row for row in rows if "straggler_slow_ranks" in row]
    assert [row["step"] for row in reports] == [2, 4]
    if world > (os.cpu_count() or 1):
        return  # more ranks than cores: their timings measure the OS scheduler, not the ranks
    if drill:
        # judged on steps 1-2, where both ranks hold equal work: at step 4 rank 1's sequence is empty, so
        # 3× its work can still be less than rank 0's
        assert reports[0]["straggler_slowest_rank"] == 1, reports
        assert reports[0]["straggler_slow_ranks"] == 1, reports
    else:
        assert all(row["straggler_slow_ranks"] == 0 for row in reports), reports


def test_a_context_parallel_checkpoint_resumes_exactly_and_in_one_process(base, single_process):
    """The CP=2 checkpoint of step 2 (mid-epoch, 10 of 16 samples consumed) holds the whole model,
    optimizer and RNG state and the data position: CP=2 resumed from it gives the uninterrupted CP=2 run's
    losses and samples exactly, and one process resumed from it continues the single-process loss
    curve."""
    from xr_nemo.training.metrics import read_metrics

    root, _ = base
    cp2 = [*PARITY_STEPS, "parallel.cp=2"]
    whole = run(base, 2, "cp2-whole", *cp2)
    run(base, 2, "cp2-until-step-2", *cp2, "trainer.max_steps=2", "checkpoint.every_steps=2")
    checkpoint = root / "cp2-until-step-2" / "checkpoints" / "step_2"
    assert run(base, 2, "cp2-resumed", *cp2, f"trainer.resume={checkpoint}") == whole[2:]
    consumed = [[row["samples"], row["consumed_samples"]] for row in read_metrics(root / "cp2-resumed")]
    assert consumed == [[5, 15], [1, 16]]
    resumed = run(base, 1, "resumed-from-cp2", *PARITY_STEPS, f"trainer.resume={checkpoint}")
    assert resumed == pytest.approx(single_process[2:], abs=2e-5, rel=0)


def _cli(run_dir, base, *overrides):
    _, common = base
    return [sys.executable, "-m", "xr_nemo.cli", "sft", *common, f"run.dir={run_dir}", *overrides]


def _run_cli(*args):
    result = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_kill_9_then_resume_reproduces_the_uninterrupted_losses(base, tmp_path):
    from xr_nemo.training.metrics import read_metrics

    steps = [
        "data.max_samples=24",
        "trainer.max_steps=8",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
    ]
    _run_cli(tmp_path / "whole", base, *steps)
    whole = [row["loss"] for row in read_metrics(tmp_path / "whole")]

    victim = processes.start(
        _cli(tmp_path / "killed", base, *steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step_4").exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before step 4"
        time.sleep(0.05)
    processes.end_group(victim)  # kill -9, the run and its helpers
    victim.wait()
    done_before = len(read_metrics(tmp_path / "killed"))
    assert done_before < 8

    subprocess.run(
        _cli(tmp_path / "killed", base, *steps, "trainer.resume=auto"), check=True, capture_output=True
    )
    resumed = [row["loss"] for row in read_metrics(tmp_path / "killed")]
    assert resumed == whole
    kept = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert kept == ["latest", "step_6", "step_8"]


def test_packed_and_unpacked_training_give_the_same_losses(base):
    from xr_nemo.config.schema import DataConfig
    from xr_nemo.data.batches import build_plan
    from xr_nemo.data.tokenize import tokenize_dataset
    from xr_nemo.recipes.tiny_cpu import SAMPLE_DATA

    root, _ = base
    data = DataConfig(train=str(SAMPLE_DATA), max_samples=6, max_length=1024, num_workers=1)
    dataset = tokenize_dataset(str(SAMPLE_DATA), "train", root / "hf", data, root / "cache", progress=False)
    packed_sequences = len(build_plan(dataset.lengths, True, 1024, 0, global_batch_size=1).sequences)
    assert packed_sequences < 6
    # One global batch holds all six samples either way, so every step sees the same data.
    common = ["data.max_samples=6", "trainer.max_steps=3", "checkpoint.every_steps=null"]
    packed = run(base, 1, "packed", *common, f"trainer.global_batch_size={packed_sequences}")
    unpacked = run(base, 1, "unpacked", *common, "data.packing=false", "trainer.global_batch_size=6")
    assert packed == pytest.approx(unpacked, abs=1e-5, rel=0)


def test_validation_loss_equals_transformers_on_the_validation_samples(base, tmp_path):
    """`val_loss` at a step is the assistant-token loss of that step's weights over the validation set,
    as Transformers computes it from the exported checkpoint of the same step."""

    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from xr_nemo.conversion.convert import export_hf
    from xr_nemo.data.conversation import prepare
    from xr_nemo.data.records import read_records
    from xr_nemo.data.tokenize import tokenize_messages
    from xr_nemo.recipes.tiny_cpu import SAMPLE_DATA
    from xr_nemo.training.metrics import read_metrics

    lines = SAMPLE_DATA.read_text().splitlines()[-4:]
    validation = tmp_path / "validation.jsonl"
    validation.write_text("\n".join(lines) + "\n")
    root, _ = base
    rows = run(
        base,
        1,
        "validated",
        "data.max_samples=8",
        "trainer.max_steps=4",
        f"data.validation={validation}",
        "trainer.val_every=2",
        "data.packing=false",
        "trainer.val_batches=4",  # 4 samples, 2 per batch: the whole validation set
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=null",
    )
    assert len(rows) == 4
    val_losses = {
        row["step"]: row["val_loss"] for row in read_metrics(root / "validated") if "val_loss" in row
    }
    assert sorted(val_losses) == [2, 4]

    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    samples = [tokenize_messages(tokenizer, prepare(r, "auto")) for r in read_records(str(validation))]
    for step, val_loss in val_losses.items():
        exported = export_hf(
            root / "validated" / "checkpoints" / f"step_{step}", tmp_path / f"hf{step}", progress=False
        )
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(exported).eval()
        total, count = 0.0, 0
        for ids, mask in samples:
            ids_t = torch.tensor([ids])
            with torch.no_grad():
                logits = model(input_ids=ids_t).logits[0, :-1]
            targets = ids_t[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            keep = torch.tensor(mask[1:], dtype=torch.bool)
            total += losses[keep].sum().item()
            count += int(keep.sum())
        assert val_loss == pytest.approx(total / count, abs=1e-4), step


def test_a_plateaued_metric_stops_the_run_and_a_resume_stops_at_the_same_step(base):
    """`trainer.stop_on_plateau`: with a bar no run can clear (the loss must fall by 100 between two
    windows of 2 steps), the run stops after 4 steps and checkpoints there; resumed from step 3, the
    history kept in the checkpoint makes it stop at step 4 again."""
    root, _ = base
    plateau = [
        "trainer.stop_on_plateau.metric=loss",
        "trainer.stop_on_plateau.direction=down",
        "trainer.stop_on_plateau.window=2",
        "trainer.stop_on_plateau.min_change=100",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=null",
        "data.max_samples=16",
    ]
    whole = run(base, 1, "plateau", *plateau)
    assert len(whole) == 4
    assert (root / "plateau" / "checkpoints" / "latest").read_text().strip() == "step_4"
    resumed = run(
        base, 1, "plateau-resumed", *plateau, f"trainer.resume={root / 'plateau' / 'checkpoints' / 'step_3'}"
    )
    assert resumed == whole[3:]
