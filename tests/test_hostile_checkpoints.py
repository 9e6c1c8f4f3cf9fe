"""Hostile operations on training checkpoints: damaged, half-written or missing files, a `latest` pointer
that is gone or points elsewhere, another model shape or parallel layout, a file system that fills up
while a checkpoint is written. One tiny SFT run (4 steps, checkpoints at steps 2 and 4) is trained once;
each case copies it, damages the copy one way and relaunches it to step 6 (or exports it). The outcome
is a resume from the newest intact checkpoint that says why, or one clear error with its place and a
`fix:` and no traceback — and every file that existed before is byte-identical afterwards unless the
operation's purpose was to replace it (a resumed run appends to its metrics and moves `latest`)."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from xr_nemo import cli
from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.errors import XrNemoError
from xr_nemo.io.manifest import MANIFEST_FILE, DamagedError, describe, read_manifest, shares, write_manifest
from xr_nemo.training.metrics import read_metrics

from helpers.hostile import Outcome, assert_clear_error, assert_unchanged, run_cli, snapshot

FIRST = [
    "trainer.max_steps=4",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "trainer.progress=false",
]
RELAUNCH = [
    "trainer.max_steps=6",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "trainer.progress=false",
]
# what a launch writes by design: its lock, and — when it trains — its metrics, TensorBoard and `latest`
LOCK = ("run.lock",)
TRAINING = (*LOCK, "metrics.jsonl", "tensorboard", "checkpoints/latest")


def sft(run: Path, *overrides: str) -> list[str]:
    return ["sft", "--recipe", "tiny_cpu", f"run.dir={run}", *overrides]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The one training run every case starts from: checkpoints/step_2, step_4 and latest → step_4."""
    run = tmp_path_factory.mktemp("hostile_checkpoints") / "run"
    assert cli.main(sft(run, *FIRST)) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_2", "step_4"]
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run)]


def under(run: Path, names: tuple[str, ...]) -> list[Path]:
    return [run / name for name in names]


# --- ways to damage a checkpoint; each returns the file it damaged -------------------------------------


def overwrite_64k(checkpoint: Path) -> str:
    """64 KiB of 0xFF into the middle of the tensor data: sizes unchanged, bytes not."""
    path = checkpoint / "__0_0.distcp"
    with path.open("r+b") as stream:
        stream.seek(path.stat().st_size // 2)
        stream.write(b"\xff" * 65536)
    return path.name


def truncate(checkpoint: Path) -> str:
    path = checkpoint / "__0_1.distcp"
    os.truncate(path, path.stat().st_size // 2)
    return path.name


def delete_tensor_file(checkpoint: Path) -> str:
    (checkpoint / "__0_0.distcp").unlink()
    return "__0_0.distcp"


def delete_metadata(checkpoint: Path) -> str:
    """Half-written: the torch_dist index, written once every rank has written its files, is absent."""
    (checkpoint / ".metadata").unlink()
    return ".metadata"


def truncate_without_manifest(checkpoint: Path) -> str:
    """A checkpoint of an earlier version (no manifest): only its structure can be checked."""
    for step in checkpoint.parent.glob("step_*"):
        (step / MANIFEST_FILE).unlink()
    return truncate(checkpoint)


DAMAGES = [overwrite_64k, truncate, delete_tensor_file, delete_metadata, truncate_without_manifest]
DAMAGE_IDS = [
    "64KiB-of-0xFF",
    "truncated",
    "tensor-file-missing",
    "metadata-missing",
    "no-manifest-truncated",
]


# --- a damaged newest checkpoint: resume from the one before, say so, keep the evidence -----------------


@pytest.mark.parametrize("damage", DAMAGES, ids=DAMAGE_IDS)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    trained, run, capsys, damage: Callable[[Path], str]
):
    checkpoints = run / "checkpoints"
    file = damage(checkpoints / "step_4")
    before = snapshot(run)
    outcome = run_cli(sft(run, *RELAUNCH), capsys)

    assert outcome.code == 0, outcome.output
    assert "Traceback" not in outcome.output
    assert f"step_4 is damaged, skipped: {file}" in outcome.output, outcome.output
    assert "resuming from step_2, the newest intact checkpoint" in outcome.output
    assert f"resumed from {checkpoints / 'step_2'} at step 2" in outcome.output
    # the damaged checkpoint is kept, byte for byte, where neither resume nor pruning looks
    assert_unchanged(
        before,
        snapshot(run),
        replaced=under(run, TRAINING),
        moved={checkpoints / "step_4": checkpoints / "step_4.damaged"},
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step_2",
        "step_4",
        "step_4.damaged",
        "step_6",
    ]
    # steps 3 and 4 trained again from step 2 exactly as the first time
    assert losses(run)[:4] == losses(trained) and len(losses(run)) == 6


# --- no pointer, or a stale one: the newest checkpoint is found; nothing is trained over ---------------


@pytest.mark.parametrize(
    ("pointer", "said"),
    [(None, "checkpoints/latest is missing"), ("step_8\n", "names step_8, which does not exist")],
    ids=["latest-deleted", "latest-names-a-missing-step"],
)
def test_without_a_usable_latest_pointer_the_newest_checkpoint_is_found_and_nothing_is_overwritten(
    trained, run, capsys, pointer: str | None, said: str
):
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    if pointer is not None:
        latest.write_text(pointer)
    before = snapshot(run)
    outcome = run_cli(sft(run, *RELAUNCH), capsys)

    assert outcome.code == 0, outcome.output
    assert "Traceback" not in outcome.output
    assert said in outcome.output
    assert f"resumed from {run / 'checkpoints' / 'step_4'} at step 4" in outcome.output
    assert_unchanged(before, snapshot(run), replaced=under(run, TRAINING))  # step_2, step_4 untouched
    assert losses(run)[:4] == losses(trained) and len(losses(run)) == 6


def test_an_old_checkpoint_without_a_manifest_resumes_with_a_note(trained, run, capsys):
    for step in (run / "checkpoints").glob("step_*"):
        (step / MANIFEST_FILE).unlink()
    before = snapshot(run)
    outcome = run_cli(sft(run, *RELAUNCH), capsys)
    assert outcome.code == 0 and "Traceback" not in outcome.output, outcome.output
    assert "has no manifest (written by an earlier version): its files are not verified" in outcome.output
    assert_unchanged(before, snapshot(run), replaced=under(run, TRAINING))
    assert losses(run)[:4] == losses(trained) and len(losses(run)) == 6


# --- refusals: one clear error, nothing changed --------------------------------------------------------


def _latest_outside(run: Path) -> list[str]:
    (run / "checkpoints" / "latest").write_text("../../elsewhere/step_4\n")
    return []


def _latest_absolute(run: Path) -> list[str]:
    (run / "checkpoints" / "latest").write_text(f"{run.parent / 'other' / 'step_4'}\n")
    return []


def _every_checkpoint_damaged(run: Path) -> list[str]:
    overwrite_64k(run / "checkpoints" / "step_2")
    truncate(run / "checkpoints" / "step_4")
    return []


def _named_checkpoint_damaged(run: Path) -> list[str]:
    overwrite_64k(run / "checkpoints" / "step_4")
    return [f"trainer.resume={run / 'checkpoints' / 'step_4'}"]


def _never_without_a_pointer(run: Path) -> list[str]:
    (run / "checkpoints" / "latest").unlink()
    return ["trainer.resume=never"]


def _another_model_shape(run: Path) -> list[str]:
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    other = build_tiny_qwen25_vl(
        run.parent / "wider", TinyQwen25VLSpec(num_kv_heads=2, intermediate_size=384)
    )
    return [f"model.hf_dir={other}"]


def _initial_weights_damaged(run: Path) -> list[str]:
    """A new run that starts from the (damaged) weights of this one."""
    overwrite_64k(run / "checkpoints" / "step_4")
    return [f"run.dir={run.parent / 'next'}", f"model.checkpoint={run / 'checkpoints' / 'step_4'}"]


REFUSALS = {
    "latest-outside-the-run": (_latest_outside, ["'../../elsewhere/step_4'", "not a checkpoint of this run"]),
    "latest-absolute-path": (_latest_absolute, ["not a checkpoint of this run", "checkpoints/latest"]),
    "every-checkpoint-damaged": (
        _every_checkpoint_damaged,
        ["none of the 2 checkpoint(s)", "__0_1.distcp", "trainer.resume=restart"],
    ),
    "named-checkpoint-damaged": (
        _named_checkpoint_damaged,
        ["step_4 is damaged: __0_0.distcp holds other bytes", "trainer.resume=auto"],
    ),
    "never-with-checkpoints-but-no-pointer": (
        _never_without_a_pointer,
        ["already has checkpoints and trainer.resume=never", "trainer.resume=restart"],
    ),
    "another-model-shape": (
        _another_model_shape,
        [
            "another model shape",
            "language_model.decoder.layers.mlp.linear_fc1.weight",
            "intermediate_size=256",
        ],
    ),
    "initial-weights-damaged": (
        _initial_weights_damaged,
        ["the checkpoint of the initial weights is damaged: __0_0.distcp", "model.checkpoint"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_launch_that_cannot_resume_safely_is_refused_with_one_clear_error(run, capsys, case: str):
    prepare, needles = REFUSALS[case]
    overrides = prepare(run)
    before = snapshot(run)
    target = next((o for o in overrides if o.startswith("run.dir=")), f"run.dir={run}")
    rest = [o for o in overrides if not o.startswith("run.dir=")]
    outcome = run_cli(["sft", "--recipe", "tiny_cpu", target, *RELAUNCH, *rest], capsys)
    assert_clear_error(outcome, *needles)
    assert_unchanged(before, snapshot(run), replaced=under(run, LOCK))
    assert not any((run / "checkpoints").glob("step_6*"))


def test_restart_is_the_explicit_way_to_train_again_from_step_0(trained, run, capsys):
    _every_checkpoint_damaged(run)
    outcome = run_cli(sft(run, *RELAUNCH, "trainer.resume=restart"), capsys)
    assert outcome.code == 0, outcome.output
    assert "trainer.resume=restart: starting at step 0" in outcome.output
    assert losses(run)[:4] == losses(trained) and len(losses(run)) == 6


# --- export and in-job loads verify too ----------------------------------------------------------------


@pytest.mark.parametrize(
    "damage", [overwrite_64k, truncate, delete_metadata], ids=DAMAGE_IDS[:2] + DAMAGE_IDS[3:4]
)
def test_export_refuses_a_damaged_checkpoint_naming_the_file(run, tmp_path, capsys, damage):
    checkpoint = run / "checkpoints" / "step_4"
    file = damage(checkpoint)
    before = snapshot(run)
    outcome = run_cli(["convert", "export", checkpoint, tmp_path / "exported"], capsys)
    assert_clear_error(outcome, file, str(checkpoint / file))
    assert not (tmp_path / "exported").exists()
    assert_unchanged(before, snapshot(run))


# --- a full file system while a checkpoint is written ---------------------------------------------------


@contextlib.contextmanager
def file_size_limit(limit: int):
    """`ulimit -f` for this process and what it forks (megatron-core's writers): a write past `limit`
    bytes fails, as on a full disk (Python ignores SIGXFSZ, so the write returns an error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_behind_and_says_what_it_needs(run, capsys):
    before = snapshot(run)
    with file_size_limit(1 << 20):  # the tensor files are ~4 MiB
        outcome = run_cli(sft(run, *RELAUNCH), capsys)
    step_4 = sum(p.stat().st_size for p in (run / "checkpoints" / "step_4").rglob("*") if p.is_file())
    assert_clear_error(
        outcome,
        "could not write checkpoint step_6",
        f"it needs about {step_4 / 2**20:.1f} MiB (the size of step_4)",
        "are free on",
        "no file may exceed 1.0 MiB (the file-size limit, `ulimit -f`)",
        "trainer.resume=auto to continue from step_4",
    )
    assert not any((run / "checkpoints").glob("step_6*"))  # no step_6, no step_6.tmp
    # the earlier checkpoints and `latest` are intact; the metrics of steps 5 and 6 were written
    assert_unchanged(before, snapshot(run), replaced=under(run, (*LOCK, "metrics.jsonl", "tensorboard")))


def full_disk_on_rank_0_worker(staging: str) -> str:
    """Rank 0 cannot write the common state (its file-size limit below that state's size)."""
    import torch
    import torch.distributed as dist

    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.training import checkpoint

    initialize(ParallelConfig())
    try:
        state = {"train_state": {"step": 6, "history": torch.zeros(100_000)}}  # ~400 KB common state
        rank_0 = dist.get_rank() == 0
        try:
            with file_size_limit(64 << 10) if rank_0 else contextlib.nullcontext():
                checkpoint._on_every_rank(
                    lambda: checkpoint._try_common_write(Path(staging), state) if rank_0 else None
                )
        except checkpoint._WriteFailed as failed:
            return failed.cause
        return "written"
    finally:
        shutdown()


def test_a_disk_full_before_megatron_writes_its_common_state_stops_every_rank(tmp_path):
    """megatron-core writes its common state on rank 0 alone, before the collective writes: the same
    bytes are tried first, so a full disk there stops every rank instead of leaving the others waiting
    in the save."""
    causes = run_distributed(full_disk_on_rank_0_worker, 2, str(tmp_path))
    assert all(cause.startswith("rank 0: ") and "File too large" in cause for cause in causes), causes
    assert list(tmp_path.iterdir()) == []  # the probe is removed


# --- another parallel layout ----------------------------------------------------------------------------


def launch_worker(argv: list[str]) -> tuple[int, str]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(argv)
    return code, output.getvalue()


def test_another_tensor_parallel_size_is_refused_naming_both_layouts_and_the_way_to_go_on(run, tmp_path):
    """TP=1 wrote the checkpoint, TP=2 relaunches: the distributed optimizer's state is stored per
    TP×PP shard, so the launch is refused before anything loads. The fix it names — a new run from the
    checkpoint's weights at TP=2 — runs."""
    checkpoint = run / "checkpoints" / "step_4"
    before = snapshot(run)
    results = run_distributed(launch_worker, 2, sft(run, *RELAUNCH, "parallel.tp=2"))
    for code, output in results:
        assert_clear_error(
            Outcome(code, output),
            "step_4 was written at tensor_parallel=1, pipeline_parallel=1, distributed optimizer",
            "this launch runs at tensor_parallel=2",
            "parallel.tp=1 parallel.pp=1",
            f"model.checkpoint={checkpoint}",
        )
    assert_unchanged(before, snapshot(run), replaced=under(run, LOCK))

    fresh = sft(tmp_path / "at-tp2", "trainer.max_steps=1", "trainer.progress=false", "parallel.tp=2")
    results = run_distributed(launch_worker, 2, [*fresh, f"model.checkpoint={checkpoint}"])
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]


def test_a_data_parallel_change_resumes_and_continues_the_losses(trained, run, tmp_path, capsys):
    one = tmp_path / "one-process"
    shutil.copytree(run, one, symlinks=True)
    assert run_cli(sft(one, *RELAUNCH), capsys).code == 0
    results = run_distributed(launch_worker, 2, sft(run, *RELAUNCH))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert losses(run)[:4] == losses(trained)
    assert losses(run)[4:] == pytest.approx(losses(one)[4:], abs=2e-5, rel=0)


# --- the manifest itself ------------------------------------------------------------------------------


def test_manifest_digests_catch_a_changed_byte_and_shares_split_the_reading_evenly(tmp_path):
    from xr_nemo.io.manifest import check_digests, check_sizes

    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 10)
    write_manifest(tmp_path, describe(tmp_path, ["a.bin", "sub/b.bin"]), tensors={"w": [2, 3]})
    manifest = read_manifest(tmp_path)
    assert manifest["tensors"] == {"w": [2, 3]} and set(manifest["files"]) == {"a.bin", "sub/b.bin"}
    check_sizes(tmp_path, manifest)
    check_digests(tmp_path, manifest, manifest["files"])
    with (tmp_path / "a.bin").open("r+b") as stream:
        stream.seek(500)
        stream.write(b"z")
    with pytest.raises(DamagedError, match=r"a\.bin holds other bytes") as error:
        check_digests(tmp_path, manifest, ["a.bin"])
    assert error.value.file == tmp_path / "a.bin" and isinstance(error.value, XrNemoError)
    (tmp_path / "xr_nemo_manifest.json").write_text("{not json")
    with pytest.raises(DamagedError, match="not readable JSON"):
        read_manifest(tmp_path)
    split = shares({"big": 100, "mid": 60, "small": 50, "tiny": 5}, 2)
    assert split == [["big", "tiny"], ["mid", "small"]]


def _manifested_checkpoint(root: Path) -> Path:
    """The files verification looks at, with a manifest of their bytes (no tensors needed)."""
    root.mkdir()
    for name, size in ((".metadata", 100), ("metadata.json", 20), ("__0_0.distcp", 3 << 20)):
        (root / name).write_bytes(os.urandom(size))
    write_manifest(root, describe(root, [".metadata", "metadata.json", "__0_0.distcp"]))
    return root


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
@pytest.mark.parametrize("read", ["completes", "fails"])
def test_digests_are_taken_beside_the_read_and_judged_before_what_it_read_is_used(
    tmp_path, monkeypatch, damaged: bool, read: str
):
    """A cold read of a checkpoint is paid once: its digests are taken by a thread while the caller
    reads; the verdict comes on leaving the block, and damage explains a read that failed."""
    import threading

    from xr_nemo.conversion import dist_checkpoint

    checkpoint = _manifested_checkpoint(tmp_path / "step_2")
    if damaged:
        overwrite_64k(checkpoint)
    reading, seen = threading.Event(), {}
    hash_files = dist_checkpoint.check_digests

    def digests_while_reading(*args):
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["alongside"] = reading.wait(timeout=10)  # set by the block: both run at once
        return hash_files(*args)

    monkeypatch.setattr(dist_checkpoint, "check_digests", digests_while_reading)
    used = False
    expected = pytest.raises(DamagedError, match="holds other bytes") if damaged else contextlib.nullcontext()
    if not damaged and read == "fails":
        expected = pytest.raises(RuntimeError, match="the read's own error")
    with expected:
        with dist_checkpoint.verified_while_reading(checkpoint) as manifest:
            assert set(manifest["files"]) == {".metadata", "metadata.json", "__0_0.distcp"}
            reading.set()
            if read == "fails":
                raise RuntimeError("the read's own error")
        used = True
    assert seen == {"thread": True, "alongside": True}
    assert used == (not damaged and read == "completes")


def test_the_pointer_is_followed_first_then_the_highest_steps_and_never_outside_the_run(tmp_path):
    from xr_nemo.run_dir import checkpoint_candidates, latest_checkpoint, set_aside

    run = tmp_path / "run"
    for step in (2, 3, 10):
        (run / "checkpoints" / f"step_{step}").mkdir(parents=True)
    (run / "checkpoints" / "step_5.tmp").mkdir()  # an interrupted save: not a checkpoint
    names = lambda: [path.name for path in checkpoint_candidates(run)]  # noqa: E731
    assert names() == ["step_10", "step_3", "step_2"]  # no pointer: by step, not by name
    (run / "checkpoints" / "latest").write_text("step_3\n")  # a run resumed from step 3
    assert names() == ["step_3", "step_10", "step_2"] and latest_checkpoint(run).name == "step_3"
    (run / "checkpoints" / "latest").write_text("step_7\n")  # gone
    assert names() == ["step_10", "step_3", "step_2"]
    assert set_aside(run / "checkpoints" / "step_10").name == "step_10.damaged"
    (run / "checkpoints" / "step_10").mkdir()
    assert set_aside(run / "checkpoints" / "step_10").name == "step_10.damaged.2"
    assert names() == ["step_3", "step_2"]
    for outside in ("../../elsewhere/step_4", str(tmp_path / "other" / "step_4"), "step_4/../../x"):
        (run / "checkpoints" / "latest").write_text(outside + "\n")
        with pytest.raises(XrNemoError, match="not a checkpoint of this run"):
            latest_checkpoint(run)


def test_leftovers_of_writes_killed_mid_way_are_removed_and_checkpoints_kept(tmp_path):
    """What `kill -9` can leave in `checkpoints/` — the `latest` pointer's temporary file, a checkpoint's
    staging directory, a replaced checkpoint set aside — goes at the next save; checkpoints and the
    pointer stay."""
    from xr_nemo.training.checkpoint import remove_interrupted_writes

    root = tmp_path / "checkpoints"
    for directory in ("step_2", "step_4", "step_6.tmp", ".step_4.old-4242"):
        (root / directory).mkdir(parents=True)
        (root / directory / "common.pt").write_bytes(b"x")
    (root / "latest").write_text("step_4\n")
    (root / ".latest.tmp-31179").write_text("step_")
    remove_interrupted_writes(root)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_2", "step_4"]
    assert (root / "step_4" / "common.pt").exists() and (root / "latest").read_text() == "step_4\n"
