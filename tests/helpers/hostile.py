"""What every hostile-operation case asserts: the command ends with one clear error (a non-zero exit,
the place, a `fix:` line, no traceback) or does what it should, and every file that existed before is
byte-identical afterwards unless the operation's purpose was to replace it."""

from __future__ import annotations

import contextlib
import hashlib
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from xr_nemo import cli

Snapshot = dict[str, str]  # relative path → sha256 of its bytes ("<dir>" for directories)


def snapshot(*roots: Path) -> Snapshot:
    """Every file and directory under `roots` (symlinks not followed), by path."""
    found: Snapshot = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
        for path in paths:
            if path.is_symlink():
                found[str(path)] = f"-> {path.readlink()}"
            elif path.is_dir():
                found[str(path)] = "<dir>"
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_unchanged(
    before: Snapshot, after: Snapshot, replaced: Iterable[Path] = (), moved: Mapping[Path, Path] | None = None
) -> None:
    """Nothing in `before` was removed or changed, except under the paths in `replaced`; what was under
    a key of `moved` must be found, byte-identical, under its value (a directory renamed aside)."""
    allowed = [str(path) for path in replaced]
    renames = {str(old): str(new) for old, new in (moved or {}).items()}

    def now(path: str) -> str:
        for old, new in renames.items():
            if path == old or path.startswith(old + "/"):
                return new + path[len(old) :]
        return path

    changed = [
        path
        for path, digest in before.items()
        if after.get(now(path)) != digest and not any(path == a or path.startswith(a + "/") for a in allowed)
    ]
    assert not changed, f"{len(changed)} pre-existing paths changed or vanished, e.g. {changed[:5]}"


@dataclass
class Outcome:
    code: int
    output: str  # stdout and stderr together


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture) -> Outcome:
    """`xr-nemo ARGV` in this process (a CLI error is a return code, not an exception)."""
    capsys.readouterr()
    try:
        code = cli.main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out + captured.err)


def assert_clear_error(outcome: Outcome, *needles: str) -> None:
    """A non-zero exit with one error that names its place and a fix, and no traceback."""
    assert outcome.code != 0, f"expected an error, got exit 0:\n{outcome.output}"
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.output.count("xr-nemo: error:") == 1, outcome.output
    assert "fix:" in outcome.output, outcome.output
    for needle in needles:
        assert needle in outcome.output, f"{needle!r} not in:\n{outcome.output}"


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail the block instead of hanging the suite when it runs past `seconds`: the alarm interrupts a
    blocking read (a FIFO) or an endless expansion in this, the main, thread."""

    def expire(signum: int, frame: object) -> None:
        pytest.fail(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
