"""How `gpu_check.py` runs its checks: each in a child process of its own with a time limit, so that a
hang, a crash or a sticky CUDA error (after which every CUDA call of that process fails) costs one check
and not the run; and the JSON report, rewritten whole after every step so that a run cut short keeps
what it measured.

A child writes its outcome to the file named by `--child-out` (`write_outcome`, and `record_partial`
while it works); the parent reads it back, or says why there is none (timeout, exit without a result).
Standard library only: the parent never imports torch, so nothing in it can touch the GPU.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("pass", "fail", "error", "timeout", "skipped")
TAIL_CHARS = 3000
KILL_GRACE_S = 10.0
# Messages of CUDA errors that leave the process's CUDA context unusable; the next check runs anyway,
# in a fresh process, and the record says which error it was.
STICKY_CUDA_ERROR = re.compile(
    r"(CUDA error: [^\n]*|an illegal memory access|illegal instruction|misaligned address|"
    r"unspecified launch failure|device-side assert|uncorrectable ECC error|cudaErrorIllegalAddress|"
    r"CUBLAS_STATUS_EXECUTION_FAILED|NCCL error[^\n]*unhandled cuda error)",
    re.IGNORECASE,
)

EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Failure)\b.*: ")

_partial_path: Path | None = None
_partial: dict[str, Any] = {}


@dataclass
class CheckResult:
    name: str
    status: str  # one of STATUSES
    seconds: float = 0.0
    summary: str = ""
    target: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    returncode: int | None = None
    sticky_cuda_error: str | None = None  # the matching line, when the error was one
    output_tail: str = ""  # the end of the child's stdout and stderr, interleaved as written
    log: str | None = None  # the child's whole output, next to the report


def sticky_cuda_error(text: str) -> str | None:
    """The first line of `text` reporting a CUDA error of the sticky kind, or None; an exception's own
    line ("RuntimeError: CUDA error: …") before a traceback's source line that quotes the message."""
    lines = [line.strip() for line in text.splitlines() if STICKY_CUDA_ERROR.search(line)]
    messages = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (messages or lines or [None])[0]


def _write_json(path: Path, value: Any) -> None:
    """Write whole or not at all: a reader (or a cut-off run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ── the child's side ────────────────────────────────────────────────────────────────────────────────


def start_outcome(path: Path) -> None:
    """Name the file this child reports to (`--child-out`)."""
    global _partial_path
    _partial_path = path
    _partial.clear()


def record_partial(**metrics: Any) -> None:
    """Keep metrics measured so far: if the child is killed, the parent still reports them."""
    _partial.update(metrics)
    if _partial_path is not None:
        _write_json(_partial_path, {"status": "running", "metrics": _partial})


def write_outcome(
    status: str, summary: str = "", metrics: dict | None = None, error: str | None = None
) -> None:
    """The child's final word; metrics recorded with `record_partial` are kept beside `metrics`."""
    outcome = {
        "status": status,
        "summary": summary,
        "metrics": {**_partial, **(metrics or {})},
        "error": error,
        "sticky_cuda_error": sticky_cuda_error(error) if error else None,
    }
    if _partial_path is not None:
        _write_json(_partial_path, outcome)


# ── the parent's side ───────────────────────────────────────────────────────────────────────────────


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - TAIL_CHARS))
        return file.read().decode("utf-8", "replace")


def _stop(process: subprocess.Popen) -> None:
    """End the child and everything it started (its own process group): TERM, then KILL."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_child(
    name: str,
    command: Sequence[str],
    timeout_s: float,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> CheckResult:
    """Run `command --child-out FILE` in a process group of its own, at most `timeout_s` seconds; the
    outcome it wrote, or why there is none. Its output goes to `log_dir/NAME.log` (tails kept)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    outcome_file, log = log_dir / f"{name}.result.json", log_dir / f"{name}.log"
    outcome_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--child-out", str(outcome_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = None
        except BaseException:  # the parent itself is stopped (Ctrl-C, SIGTERM): the child goes too
            _stop(process)
            raise
    seconds = time.perf_counter() - start
    outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
    result = _result_of(name, outcome, returncode, timeout_s, _tail(log))
    result.seconds, result.log = seconds, str(log)
    return result


def interrupted(name: str, log_dir: Path, why: str) -> CheckResult:
    """The record of a check whose run was stopped from outside: what its child had written so far."""
    outcome_file = log_dir / f"{name}.result.json"
    outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
    result = _result_of(name, outcome, None, 0.0, _tail(log_dir / f"{name}.log"))
    result.error = why
    return result


def _result_of(
    name: str, outcome: dict | None, returncode: int | None, timeout_s: float, tail: str
) -> CheckResult:
    """The record of one child from what it wrote (maybe only partial metrics) and how it ended."""
    metrics = (outcome or {}).get("metrics", {})
    result = CheckResult(name, "error", metrics=metrics, returncode=returncode, output_tail=tail)
    if returncode is None:
        result.status = "timeout"
        result.error = f"no result within {timeout_s:.0f} s: the check was stopped (its log: the tail below)"
    elif outcome is None or outcome.get("status") not in ("pass", "fail", "error"):
        result.error = f"the check exited with code {returncode} without a result; last output:\n{tail}"
    else:
        result.status = outcome["status"]
        result.summary, result.error = outcome.get("summary", ""), outcome.get("error")
    if result.status in ("error", "timeout"):  # the child's word, else its output and partial records
        partial_text = "\n".join(value for value in metrics.values() if isinstance(value, str))
        result.sticky_cuda_error = (outcome or {}).get("sticky_cuda_error") or sticky_cuda_error(
            f"{partial_text}\n{tail}"
        )
    return result


class Report:
    """The JSON report: the environment, then one result per check, written after every change."""

    def __init__(self, path: Path, targets: dict[str, Any]) -> None:
        self.path = path
        self.environment: dict[str, Any] = {}
        self.targets = targets
        self.results: list[CheckResult] = []

    def write(self) -> None:
        _write_json(
            self.path,
            {
                "environment": self.environment,
                "targets": self.targets,
                "results": [asdict(result) for result in self.results],
            },
        )

    def add(self, result: CheckResult) -> None:
        self.results.append(result)
        self.write()


def format_table(results: Sequence[CheckResult]) -> str:
    """One row per check: status, result (the error's last line, or why it was skipped), target, s."""
    rows = [("check", "status", "result", "target", "s")]
    for result in results:
        shown = result.summary
        if result.error and result.status != "skipped":
            lines = result.error.strip().splitlines()
            shown = result.sticky_cuda_error or (lines[-1] if lines else "")
        rows.append((result.name, result.status, shown, result.target, f"{result.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
