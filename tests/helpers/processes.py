"""Commands run in their own process group and ended as a whole, as Slurm's cgroup or a node failure
ends a job. Killing only the main process would leave behind the helpers that libraries start
(megatron-core's checkpoint writer keeps a multiprocessing manager process), each holding a few hundred
MB for the rest of the test session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from typing import Any


def start(command: list[str], **popen: Any) -> subprocess.Popen:
    return subprocess.Popen(command, start_new_session=True, **popen)


def end_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every process left in the command's group (none once all have exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def run(command: list[str], timeout: float = 900, **popen: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)`, then whatever the command left running
    is ended. Output goes through files: a helper left running would keep a pipe open forever."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = start(command, stdout=stdout, stderr=stderr, text=True, **popen)
        try:
            process.wait(timeout=timeout)
        finally:
            end_group(process)
            process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read())
