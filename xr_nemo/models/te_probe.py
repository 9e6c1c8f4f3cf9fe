"""Transformer Engine, probed before megatron-core imports it.

megatron-core imports `transformer_engine` when many of its modules load, and catches only ImportError.
A TE that is installed but broken (built against another torch, a CUDA library that does not load)
raises OSError, RuntimeError or AttributeError instead, and takes every import of megatron-core, so
every xr-nemo command, down with it. `guard()`, run by `import xr_nemo` before anything imports
megatron-core, imports `transformer_engine.pytorch` in a child process under a time limit (a crash or a
hang there cannot take this process down). When that fails, `import transformer_engine` is made to raise
ImportError in this process, as if TE were absent, so megatron-core falls back to its local layers, and
TE's own error is kept for `layer_settings` to report.

Cost: one `find_spec` where TE is not installed. Where it is, one probe per process tree: the verdict is
passed to child processes (reward workers, engine processes) in `XR_NEMO_TE_PROBE`, keyed by where TE
is installed, so a child that finds another TE probes again. Ranks started by torchrun or srun are not
our children: each probes once, side by side (the seconds TE's import takes). Standard library only:
this module runs on every `import xr_nemo`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

VERDICT_ENV = "XR_NEMO_TE_PROBE"  # JSON {"origin": ..., "error": ...}, set for child processes
TIMEOUT_ENV = "XR_NEMO_TE_PROBE_TIMEOUT"  # seconds the probe may take
DEFAULT_TIMEOUT_S = 120.0
# `transformer_engine_torch` is TE's compiled torch extension, which megatron-core imports on its own.
BLOCKED_MODULES = ("transformer_engine", "transformer_engine_torch")
_PROBE = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); import transformer_engine.pytorch"
_MAX_CHARS = 1000


@dataclass(frozen=True)
class TEProbe:
    """What the probe found."""

    origin: str | None  # where `transformer_engine` is installed; None: it is not
    error: str | None = None  # why it does not import: the end of its own error; None: it imports

    @property
    def broken(self) -> bool:
        return self.origin is not None and self.error is not None


_result: TEProbe | None = None


def probe() -> TEProbe:
    """This process's verdict on Transformer Engine, probed on the first call."""
    global _result
    if _result is None:
        _result = _probe()
    return _result


def guard() -> TEProbe:
    """Probe TE; a broken one is made to raise ImportError in this process, as a missing one does."""
    result = probe()
    if result.broken:
        for name in BLOCKED_MODULES:
            if sys.modules.get(name) is None:
                sys.modules[name] = None  # `import name` now raises ModuleNotFoundError
    return result


def _probe() -> TEProbe:
    if "transformer_engine" in sys.modules:  # imported (or blocked) before xr_nemo
        module = sys.modules["transformer_engine"]
        return TEProbe(None) if module is None else TEProbe(getattr(module, "__file__", None) or "(imported)")
    try:
        spec = importlib.util.find_spec("transformer_engine")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return TEProbe(None)
    origin = spec.origin or ", ".join(spec.submodule_search_locations or []) or "transformer_engine"
    inherited = _inherited(origin)
    if inherited is not None:
        return inherited
    result = TEProbe(origin, _import_error(_timeout()))
    os.environ[VERDICT_ENV] = json.dumps({"origin": result.origin, "error": result.error})
    return result


def _inherited(origin: str) -> TEProbe | None:
    """The verdict of the parent process, when it probed the same installation."""
    try:
        verdict = json.loads(os.environ.get(VERDICT_ENV) or "null")
    except ValueError:
        return None
    if not isinstance(verdict, dict) or verdict.get("origin") != origin:
        return None
    error = verdict.get("error")
    return TEProbe(origin, error if isinstance(error, str) else None)


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _import_error(timeout: float) -> str | None:
    """Import `transformer_engine.pytorch` in a child process on this process's `sys.path`; None when it
    imports, else the end of its error. stderr goes to a file, not a pipe: a grandchild left holding a
    pipe would keep the read waiting after the child is killed."""
    command = [sys.executable, "-c", _PROBE, json.dumps(sys.path)]
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return (
                f"importing transformer_engine.pytorch did not finish within {timeout:g} s (a hang while "
                f"loading its libraries; if it is only slow, raise {TIMEOUT_ENV}=seconds)"
            )
        except OSError as error:
            return f"could not start {sys.executable} to import it: {error}"
        if done.returncode == 0:
            return None
        stderr.seek(0)
        lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    message = _last_error(lines)
    if done.returncode < 0:
        number = -done.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else ""
        killed = f"the import was killed by signal {number} {name}".rstrip()
        return f"{killed}: {message}" if message else killed
    return message or f"the import exited with status {done.returncode} and no message"


def _last_error(lines: list[str]) -> str:
    """A traceback's last line (the exception) and its innermost frame (where TE raised it)."""
    if not lines:
        return ""
    frame = next((line for line in reversed(lines) if line.startswith('File "')), None)
    return (lines[-1] + (f" ({frame})" if frame else ""))[:_MAX_CHARS]
