"""Hostile operations: outputs that would destroy inputs, two launches on one run directory, inputs that
used to hang, trace back or pass silently. Each case ends in one clear error (exit code, place, `fix:`,
no traceback), or does what it should, and leaves every file that existed before byte-identical unless
replacing it was the operation's purpose. In-process through the CLI wherever possible; a second launch
and a stale lock need a second process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from xr_nemo.data import records
from xr_nemo.data.records import DataError, read_records
from xr_nemo.distributed.launch_env import free_local_port

from helpers.hostile import assert_clear_error, assert_unchanged, run_cli, snapshot, within

# A config.yaml, metrics and a checkpoint: what `convert` must never replace.
RUN_CONFIG = "run:\n  dir: run\n"


@dataclass
class World:
    """Per test: a copy of the shared tiny model, its import, its export, a run directory and a folder
    of the user's own, under `root`."""

    root: Path

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def imported(self) -> Path:
        return self.root / "imported"

    @property
    def exported(self) -> Path:
        return self.root / "exported"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def own(self) -> Path:
        return self.root / "notes"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    from xr_nemo.conversion.convert import export_hf, import_hf
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    root = tmp_path_factory.mktemp("hostile")
    hf = build_tiny_qwen25_vl(root / "hf")
    import_hf(hf, root / "imported", progress=False)
    export_hf(root / "imported", root / "exported", progress=False)
    run = root / "run"
    import_hf(hf, run / "checkpoints" / "step_1", progress=False)
    (run / "checkpoints" / "latest").write_text("step_1\n")
    (run / "config.yaml").write_text(RUN_CONFIG)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("a directory of the user's own")
    return root


@pytest.fixture
def world(originals, tmp_path) -> World:
    root = tmp_path / "world"
    shutil.copytree(originals, root, symlinks=True)
    return World(root)


# ---- 1. No output can destroy an input -------------------------------------------------------------
# (name, argv, expected text or None for success, the paths the operation may replace)
Args = Callable[[World], list]
CONVERT_CASES: list[tuple[str, Args, str | None, Callable[[World], list[Path]]]] = [
    (
        "import-onto-its-input",
        lambda w: ["convert", "import", w.hf, w.hf, "--overwrite"],
        "is the input",
        lambda w: [],
    ),
    (
        "import-inside-its-input",
        lambda w: ["convert", "import", w.hf, w.hf / "megatron"],
        "lies inside the input",
        lambda w: [],
    ),
    (
        "import-around-its-input",
        lambda w: ["convert", "import", w.hf, w.root, "--overwrite"],
        "contains the input",
        lambda w: [],
    ),
    (
        "export-onto-its-run",
        lambda w: ["convert", "export", w.run, w.run, "--overwrite"],
        "is a run directory",
        lambda w: [],
    ),
    (
        "export-into-a-run",
        lambda w: ["convert", "export", w.imported, w.run / "exports", "--overwrite"],
        "lies inside the run directory",
        lambda w: [],
    ),
    (
        "export-onto-another-run",
        lambda w: ["convert", "export", w.imported, w.run, "--overwrite"],
        "is a run directory",
        lambda w: [],
    ),
    (
        "export-over-a-directory-of-the-users",
        lambda w: ["convert", "export", w.imported, w.own, "--overwrite"],
        "is not an earlier output of `convert export`",
        lambda w: [],
    ),
    (
        "import-over-an-export",
        lambda w: ["convert", "import", w.hf, w.exported, "--overwrite"],
        "is not an earlier output of `convert import`",
        lambda w: [],
    ),
    (
        "export-over-an-import",
        lambda w: ["convert", "export", w.run, w.imported, "--overwrite"],
        "is not an earlier output of `convert export`",
        lambda w: [],
    ),
    (
        "export-over-an-export-without-overwrite",
        lambda w: ["convert", "export", w.imported, w.exported],
        "already exists",
        lambda w: [],
    ),
    (
        "export-replaces-its-own-earlier-output",
        lambda w: ["convert", "export", w.run, w.exported, "--overwrite"],
        None,
        lambda w: [w.exported],
    ),
    (
        "import-replaces-its-own-earlier-output",
        lambda w: ["convert", "import", w.hf, w.imported, "--overwrite"],
        None,
        lambda w: [w.imported],
    ),
    (
        "export-into-the-runs-own-place",
        lambda w: ["convert", "export", w.run, w.run / "hf", "--overwrite"],
        None,
        lambda w: [w.run / "hf"],
    ),
]


@pytest.mark.parametrize(
    ("name", "argv", "expected", "replaced"), CONVERT_CASES, ids=[case[0] for case in CONVERT_CASES]
)
def test_no_conversion_output_destroys_an_input(world, capsys, name, argv, expected, replaced):
    before = snapshot(world.root)
    outcome = run_cli(argv(world), capsys)
    if expected is None:
        assert outcome.code == 0, outcome.output
        (target,) = replaced(world)
        info = json.loads((target / "xr_nemo.json").read_text())
        assert info["format"].startswith("xr-nemo/"), info
    else:
        assert_clear_error(outcome, expected)
    assert_unchanged(before, snapshot(world.root), replaced=replaced(world))


# ---- 5. One writer per run directory ---------------------------------------------------------------
def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """A second process that holds `run_dir`'s lock, as a launch does from its start to its end."""
    code = (
        "import sys, time\n"
        "from xr_nemo.io.run_lock import lock_run_dir\n"
        "lock_run_dir(sys.argv[1], print)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _sft(run_dir: Path, *overrides: str) -> list[str]:
    return ["sft", f"run.dir={run_dir}", "trainer.progress=false", *overrides]


def test_a_second_launch_on_a_run_directory_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(RUN_CONFIG)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    holder = _hold_lock(run_dir)
    try:
        before = snapshot(tmp_path)
        with within(120):
            outcome = run_cli(_sft(run_dir), capsys)
        assert_clear_error(
            outcome, "is being written by another launch", f"pid {holder.pid}", socket.gethostname(), "since"
        )
        assert_unchanged(before, snapshot(tmp_path))
    finally:
        holder.kill()
        holder.wait()


def prepare_run_dir_worker(run_dir: str) -> str:
    """One rank of a launch: what preparing `run_dir` ends in."""
    from xr_nemo.cli import load_recipe
    from xr_nemo.config.overrides import apply_overrides
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.errors import XrNemoError
    from xr_nemo.training.setup import prepare_run_dir

    config = apply_overrides(load_recipe("tiny_cpu", "sft"), [f"run.dir={run_dir}"])
    initialize(config.parallel)
    try:
        prepare_run_dir(config, "sft")
    except XrNemoError as error:
        return str(error)
    finally:
        shutdown()
    return "no error"


def test_every_rank_of_a_refused_launch_stops_with_rank_0s_message(tmp_path):
    """Rank 0 takes the lock; the other ranks must not wait for it in vain."""
    from xr_nemo.distributed.local_launch import run_distributed

    holder = _hold_lock(tmp_path)
    try:
        messages = run_distributed(prepare_run_dir_worker, 2, str(tmp_path), timeout_s=120)
    finally:
        holder.kill()
        holder.wait()
    assert messages[0] == messages[1] and f"pid {holder.pid}" in messages[0], messages


def test_a_lock_left_by_a_killed_launch_is_taken_over_with_a_message(tmp_path):
    from xr_nemo.io.run_lock import lock_run_dir, release_run_dir

    holder = _hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)  # a crash: no chance to release anything
    holder.wait()
    said: list[str] = []
    lock_run_dir(tmp_path, said.append)
    try:
        assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "taking over" in said[0], said
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    finally:
        release_run_dir(tmp_path)
    assert (tmp_path / "run.lock").read_text() == ""  # released: nothing left to take over


# ---- 7. No hangs, no tracebacks on hostile inputs; 8. no wait for missing ranks without end --------
def _config_file(content: bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "config.yaml"
        path.write_bytes(content)
        return path

    return make


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "fifo.yaml")
    return root / "fifo.yaml"


def _symlink_loop(root: Path) -> Path:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    return root / "a"


def _dangling(root: Path) -> Path:
    (root / "link").symlink_to(root / "nowhere")
    return root / "link"


BILLION_LAUGHS = b'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n".encode() for i in range(8)
)

# (name, make the --config file under the test's directory, expected text)
CONFIG_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("binary-file", _config_file(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "not UTF-8 text"),
    ("latin-1-text", _config_file("run:\n  dir: caf\xe9\n".encode("latin-1")), "not UTF-8 text"),
    ("billion-laughs", _config_file(BILLION_LAUGHS), "aliases are not accepted"),
    ("a-list-not-a-mapping", _config_file(b"- run\n- model\n"), "not a mapping of sections"),
    ("empty-file", _config_file(b""), "holds nothing"),
    ("nested-too-deeply", _config_file(b"[" * 100_000 + b"]" * 100_000), "nests values too deeply"),
    ("a-fifo", _fifo, "FIFO"),
    ("a-symlink-loop", _symlink_loop, "Too many levels of symbolic links"),
]


@pytest.mark.parametrize(("name", "make", "expected"), CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_a_hostile_config_file_is_one_clear_error(tmp_path, capsys, name, make, expected):
    config = make(tmp_path)
    before = snapshot(tmp_path)
    with within(30):
        outcome = run_cli(["sft", "--config", config], capsys)
    assert_clear_error(outcome, expected, "--config")
    assert_unchanged(before, snapshot(tmp_path))


# (name, overrides under the test's directory, environment, expected texts)
LAUNCH_CASES: list[tuple[str, Callable[[Path], list[str]], dict[str, str], tuple[str, ...]]] = [
    ("run-dir-empty", lambda root: ["run.dir="], {}, ("run.dir is empty",)),
    (
        "run-dir-a-symlink-loop",
        lambda root: [f"run.dir={_symlink_loop(root)}"],
        {},
        ("loops back on itself", "run.dir"),
    ),
    (
        "run-dir-a-dangling-symlink",
        lambda root: [f"run.dir={_dangling(root)}"],
        {},
        ("which does not exist", "run.dir"),
    ),
    (
        "run-dir-under-a-dangling-symlink",
        lambda root: [f"run.dir={_dangling(root) / 'run'}"],
        {},
        ("which does not exist", "run.dir"),
    ),
    (
        "a-key-given-twice-warns-naming-both-and-the-last-applies",
        lambda root: [f"run.dir={root / 'run'}", "trainer.max_steps=3", "trainer.max_steps=0"],
        {},
        (
            "trainer.max_steps is given twice",
            "'trainer.max_steps=3' then 'trainer.max_steps=0'",
            "out of range",
        ),
    ),
    (
        "master-port-not-a-number",
        lambda root: [f"run.dir={root / 'run'}"],
        {"MASTER_PORT": "abc"},
        ("MASTER_PORT='abc' is not a TCP port number",),
    ),
    (
        "world-size-without-a-launcher",
        lambda root: [f"run.dir={root / 'run'}"],
        {"WORLD_SIZE": "2"},
        ("WORLD_SIZE=2 is set but RANK is not", "torchrun --nproc-per-node 2"),
    ),
    (
        "rank-0-waiting-for-a-missing-rank",
        lambda root: [f"run.dir={root / 'run'}"],
        {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "XR_NEMO_RENDEZVOUS_TIMEOUT": "2"},
        ("did not arrive within 2 s", "rank(s) 1 missing", "127.0.0.1:", "XR_NEMO_RENDEZVOUS_TIMEOUT"),
    ),
    (
        "rank-1-waiting-for-a-missing-rank-0",
        lambda root: [f"run.dir={root / 'run'}"],
        {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "XR_NEMO_RENDEZVOUS_TIMEOUT": "2"},
        ("nothing answered at 127.0.0.1:", "within 2 s", "XR_NEMO_RENDEZVOUS_TIMEOUT"),
    ),
]


@pytest.mark.parametrize(
    ("name", "overrides", "env", "expected"), LAUNCH_CASES, ids=[case[0] for case in LAUNCH_CASES]
)
def test_a_hostile_launch_is_one_clear_error(tmp_path, capsys, monkeypatch, name, overrides, env, expected):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("the current directory is not a run directory")
    monkeypatch.chdir(workdir)
    for variable in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(variable, raising=False)
    if "RANK" in env:
        env = {**env, "MASTER_PORT": str(free_local_port())}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    argv = _sft(tmp_path / "unused", *overrides(tmp_path))
    before = snapshot(tmp_path)
    started = time.monotonic()
    with within(60):
        outcome = run_cli(argv, capsys)
    assert_clear_error(outcome, *expected)
    assert time.monotonic() - started < 30
    assert_unchanged(before, snapshot(tmp_path))
    assert sorted(p.name for p in workdir.iterdir()) == ["keep.txt"]


def test_a_fifo_as_training_data_is_one_clear_error(tmp_path, capsys):
    """Through the whole launch: the run directory is prepared, then the data are refused."""
    from xr_nemo.io.run_lock import release_run_dir

    os.mkfifo(tmp_path / "train.jsonl")
    run_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    with within(120):
        outcome = run_cli(_sft(run_dir, f"data.train={tmp_path / 'train.jsonl'}"), capsys)
    release_run_dir(run_dir)
    assert_clear_error(outcome, "is a FIFO (named pipe), not a data file", str(tmp_path / "train.jsonl"))
    assert_unchanged(before, snapshot(tmp_path), replaced=[run_dir])


def _unix_socket(root: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "data.jsonl"))
    server.close()  # the socket file stays
    return root / "data.jsonl"


def _fifo_in_a_folder(root: Path) -> Path:
    (root / "data").mkdir()
    (root / "data" / "extra.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    os.mkfifo(root / "data" / "train.jsonl")
    return root / "data"


def _one_long_line(root: Path) -> Path:
    path = root / "long.jsonl"
    with path.open("w") as out:
        out.write(json.dumps({"prompt": "x" * (records.MAX_LINE_BYTES + 1), "response": "y"}) + "\n")
        out.write(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    return path


def _json_over_its_bound(root: Path) -> Path:
    path = root / "big.json"
    path.write_text(json.dumps([{"prompt": "x" * 100, "response": "y"}] * 30))
    return path


# (name, make the data path, expected text, where the error is)
DATA_CASES: list[tuple[str, Callable[[Path], Path], str, Callable[[Path], str]]] = [
    ("a-fifo", lambda root: _fifo(root).rename(root / "d.jsonl"), "FIFO", lambda p: str(p)),
    ("a-character-device", lambda root: Path("/dev/zero"), "a character device", lambda p: str(p)),
    ("a-socket", _unix_socket, "a socket", lambda p: str(p)),
    ("a-fifo-in-a-folder", _fifo_in_a_folder, "FIFO", lambda p: str(p / "train.jsonl")),
    ("a-line-over-16-MiB", _one_long_line, "longer than 16 MiB", lambda p: f"{p}:1"),
    ("a-json-file-over-its-bound", _json_over_its_bound, "at most 1,000 bytes", lambda p: str(p)),
]


@pytest.mark.parametrize(
    ("name", "make", "expected", "where"), DATA_CASES, ids=[case[0] for case in DATA_CASES]
)
def test_a_data_path_that_is_no_data_file_is_one_clear_error(
    tmp_path, monkeypatch, name, make, expected, where
):
    monkeypatch.setattr(records, "MAX_JSON_BYTES", 1000)  # the bound, small enough for a test file
    path = make(tmp_path)
    before = snapshot(tmp_path)
    with within(30):
        try:
            found = list(read_records(str(path)))
        except DataError as error:
            found = [error]
    errors = [item for item in found if isinstance(item, DataError)]
    assert len(errors) == 1, found
    assert expected in errors[0].what and errors[0].where == where(path) and errors[0].fix
    if name == "a-line-over-16-MiB":  # the next line is read as usual
        assert [item.where for item in found if not isinstance(item, DataError)] == [f"{path}:2"]
    assert_unchanged(before, snapshot(tmp_path))


def test_json_lines_in_a_json_file_over_the_bound_are_streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "MAX_JSON_BYTES", 100)
    path = tmp_path / "dev.json"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n" for i in range(20)))
    found = list(read_records(str(path)))
    assert [item.fields["prompt"] for item in found] == [f"q{i}" for i in range(20)]
