"""Our GRPO loss and its gradient equal the peers' on one fixed batch (`benchmarks/peers_loss.py` has the
batch, `peers_verl.py` and `peers_parity.py` the comparisons; `benchmarks/peers.py` also measures SFT
and GRPO side by side).

veRL: its own functions, read from the pinned verbatim copy in `benchmarks/third_party/verl/` with only
torch and numpy, so these run everywhere. TRL: its installed `GRPOTrainer._compute_loss`, in this
interpreter when trl imports here, else in build/peers-venv (`make peers`) when that exists; skipped
otherwise."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers
_spec.loader.exec_module(peers)  # puts benchmarks/ on sys.path for its sibling modules
batches = importlib.import_module("peers_loss")
verl_side = importlib.import_module("peers_verl")
checks = importlib.import_module("peers_parity")


@pytest.fixture(scope="module")
def verl():
    return verl_side.load_verl()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_verl(dtype):
    """Group advantages, low_var_kl (clamps included), the vanilla policy loss with clip-higher and TIS
    weights, token- and sequence-mean aggregation: loss and gradient within 1e-6."""
    results = verl_side.verl_parity(batches.parity_batch(dtype=dtype))
    assert len(results) == 11
    assert {name: diff for name, diff in results.items() if diff > batches.TOLERANCE} == {}


def test_the_batch_exercises_every_branch():
    """Both clip bounds, the importance cap and a group without signal are hit, so agreement means
    something; veRL's dual clip (ratio > 3 with a negative advantage), which we do not have, is not."""
    batch = batches.parity_batch()
    coverage = batches.batch_coverage(batch)
    assert all(count > 0 for count in coverage.values()), coverage
    ratio = (batch.logprobs - batch.old_logprobs).exp()
    assert not ((ratio > 3) & (batch.advantages[:, None] < 0) & (batch.mask > 0)).any()


def test_a_different_loss_is_caught(verl):
    """The comparison can fail: our sequence-level loss against veRL's token mean, and our loss without
    the importance weights against veRL's with them, differ far beyond the tolerance."""
    batch = batches.parity_batch()
    weights = batches.importance_weights(batch, batches.importance_cap())
    pairs = [
        (lambda lp: batches.ours_loss(batch, lp, "sequence", None), None),
        (lambda lp: batches.ours_loss(batch, lp, "token", None), weights),
    ]
    for ours_fn, verl_weights in pairs:
        ours = batches.loss_and_grad(ours_fn, batch)
        theirs = batches.loss_and_grad(
            lambda lp, w=verl_weights: verl_side.verl_loss(verl, batch, lp, "token-mean", w, True), batch
        )
        assert batches.max_diff(ours[1], theirs[1]) > 1e-3


def test_a_changed_verl_copy_is_refused(tmp_path, monkeypatch):
    for name in verl_side.VERL_FILES:
        shutil.copy(verl_side.VERL_DIR / name, tmp_path / name)
    with (tmp_path / "core_algos.py").open("a") as handle:
        handle.write("\n# edited\n")
    monkeypatch.setattr(verl_side, "VERL_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="not the pinned copy"):
        verl_side.load_verl()


def _trl_results(tmp_path: Path) -> dict:
    if checks.trl_available():
        return checks.parity(tmp_path)
    if not peers.PEERS_PYTHON.exists():
        pytest.skip("trl is not importable here and build/peers-venv does not exist (`make peers`)")
    out = tmp_path / "parity.json"
    command = [str(peers.PEERS_PYTHON), str(ROOT / "benchmarks" / "peers.py"), "--worker", "parity"]
    command += ["--workdir", str(tmp_path), "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_matches_trl(tmp_path):
    """TRL's `dapo` (token mean over the accumulation window, with and without vLLM's importance ratio)
    and `grpo` (sequence mean) losses with clip-higher and k3 KL: loss and gradient within 1e-6 in
    float64 and float32. TRL's default `use_bias_correction_kl=True` (k3 × π/π_old) is another KL
    gradient, and shows as one."""
    results = _trl_results(tmp_path)["trl"]
    default_kl = {name: d for name, d in results.items() if "use_bias_correction_kl=True" in name}
    matching = {name: d for name, d in results.items() if name not in default_kl}
    assert len(matching) == 8 and len(default_kl) == 2
    assert {n: d for n, d in matching.items() if max(d.values()) > batches.TOLERANCE} == {}
    assert all(d["float64"] > 1e-5 for n, d in default_kl.items() if n.startswith("gradient"))
