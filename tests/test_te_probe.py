"""Transformer Engine is probed, not trusted: a TE that is installed but raises on import (here a fake
`transformer_engine` package on the path whose import raises OSError, as a library built for another
torch does) is reported with its own error, and megatron-core, which catches only ImportError, imports
past it onto its local layers; a TE import that hangs or crashes is cut off by the probe's child process.

The probe runs in a child process on the test process's `sys.path`, so the fakes work in-process (TE
entries in `sys.modules` are set aside for the test); the end-to-end test runs a fresh interpreter, as a
user's command is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xr_nemo.models import te_probe

UNDEFINED_SYMBOL = "libtransformer_engine.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"


def fake_te(root: Path, init: str) -> Path:
    """A `transformer_engine` package (with `pytorch`) under `root` whose import runs `init`."""
    package = root / "transformer_engine"
    (package / "pytorch").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(init))
    (package / "pytorch" / "__init__.py").write_text("")
    return package / "__init__.py"


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """Put a fake TE first on `sys.path`, with no verdict inherited and no TE imported in this process."""
    monkeypatch.delenv(te_probe.VERDICT_ENV, raising=False)
    for name in te_probe.BLOCKED_MODULES:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)

    def install(init: str) -> str:
        origin = fake_te(tmp_path, init)
        monkeypatch.syspath_prepend(str(tmp_path))
        return str(origin)

    return install


def test_a_broken_te_is_reported_with_its_own_error(on_path):
    origin = on_path(f"raise OSError({UNDEFINED_SYMBOL!r})")
    result = te_probe._probe()
    assert result.broken and result.origin == origin
    assert result.error.startswith(f"OSError: {UNDEFINED_SYMBOL}")
    assert origin in result.error  # where it was raised
    # child processes get the verdict rather than probing again
    assert json.loads(os.environ[te_probe.VERDICT_ENV]) == {"origin": origin, "error": result.error}


def test_a_working_te_is_usable(on_path):
    origin = on_path("")
    assert te_probe._probe() == te_probe.TEProbe(origin, None)
    assert json.loads(os.environ[te_probe.VERDICT_ENV]) == {"origin": origin, "error": None}


def test_a_hanging_import_is_cut_off(on_path, monkeypatch):
    on_path("import time\ntime.sleep(60)")
    monkeypatch.setenv(te_probe.TIMEOUT_ENV, "1")
    result = te_probe._probe()
    assert result.broken
    assert "did not finish within 1 s" in result.error and te_probe.TIMEOUT_ENV in result.error


def test_a_crashing_import_is_reported_with_its_signal(on_path):
    on_path("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    result = te_probe._probe()
    assert result.broken and "killed by signal 11 SIGSEGV" in result.error


def test_a_child_takes_its_parents_verdict_on_the_same_installation(on_path, monkeypatch):
    origin = on_path("")  # it imports: a verdict saying otherwise can only come from the environment
    monkeypatch.setenv(te_probe.VERDICT_ENV, json.dumps({"origin": origin, "error": "OSError: inherited"}))
    assert te_probe._probe() == te_probe.TEProbe(origin, "OSError: inherited")
    # the verdict on another installation does not count: this one is probed
    monkeypatch.setenv(te_probe.VERDICT_ENV, json.dumps({"origin": "/elsewhere", "error": "OSError: other"}))
    assert te_probe._probe() == te_probe.TEProbe(origin, None)


def test_without_te_nothing_is_started(monkeypatch):
    monkeypatch.setattr(te_probe.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(te_probe.subprocess, "run", lambda *a, **k: pytest.fail("started a probe"))
    for name in te_probe.BLOCKED_MODULES:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    assert te_probe._probe() == te_probe.TEProbe(None)


END_TO_END = """
import json, warnings
import xr_nemo.cli  # the `xr-nemo` entry point
from megatron.core.models.gpt.gpt_layer_specs import HAVE_TE, get_gpt_layer_local_spec
import torch
from xr_nemo.config.schema import ModelConfig
from xr_nemo.errors import ConfigError
from xr_nemo.models.layer_settings import resolve_layer_settings

spec = get_gpt_layer_local_spec()
torch.cuda.is_available = lambda: True  # as on a GPU machine, where only TE stands in the way
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    auto = str(resolve_layer_settings(ModelConfig()).impl)
try:
    resolve_layer_settings(ModelConfig(transformer_impl="transformer_engine"))
    refused = None
except ConfigError as error:
    refused = str(error)
print(json.dumps({"have_te": HAVE_TE, "linear": spec.submodules.mlp.submodules.linear_fc1.__name__,
                  "auto": auto, "warnings": [str(w.message) for w in seen], "refused": refused}))
"""


def _python(code: str, fake_root: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != te_probe.VERDICT_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake_root), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_megatron_core_and_xr_nemo_import_past_a_broken_te(tmp_path):
    fake_te(tmp_path, f"raise OSError({UNDEFINED_SYMBOL!r})")
    # the fake breaks megatron-core as a broken TE does, when xr_nemo has not probed it first
    unguarded = _python("import megatron.core.models.gpt", tmp_path)
    assert unguarded.returncode != 0 and f"OSError: {UNDEFINED_SYMBOL}" in unguarded.stderr

    done = _python(END_TO_END, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["have_te"] is False and result["linear"] == "ColumnParallelLinear"
    assert result["auto"] == "local"
    (warning,) = [w for w in result["warnings"] if "auto builds the local layers" in w]
    assert UNDEFINED_SYMBOL in warning and "model.transformer_impl=local" in warning
    assert f"OSError: {UNDEFINED_SYMBOL}" in result["refused"]
    assert "reinstall Transformer Engine" in result["refused"]
