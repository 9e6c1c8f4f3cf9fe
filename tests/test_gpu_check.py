"""`benchmarks/gpu_check.py` runs only on a GPU; what a CPU can check is that it imports without one,
reads its arguments, counts FLOPs and MFU as a hand count does, and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (registered while it runs: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_flops_and_mfu_of_the_1_5b_shape_match_a_hand_count(gpu_check):
    hidden, ffn, layers, heads, kv_heads, head_dim, vocab = 1536, 8960, 28, 12, 2, 128, 151_936
    per_layer = (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * ffn  # gate, up, down
    )
    matrices = layers * per_layer + vocab * hidden  # the output layer is the tied embedding
    seq = 4096
    attention = 4 * layers * heads * head_dim * (seq + 1) / 2  # QKᵀ and AV over (s + 1) / 2 keys
    by_hand = 3 * (2 * matrices + attention)  # forward, and backward twice the forward
    assert gpu_check.sft_flops_per_token(gpu_check.hf_config("1.5b"), seq) == pytest.approx(
        by_hand, rel=1e-12
    )
    assert by_hand == pytest.approx(1.0319e10, rel=1e-4)
    # 20,000 tokens/s on an H100 (989 dense bf16 TFLOP/s)
    assert gpu_check.mfu(20_000, by_hand, 989.0) == pytest.approx(20_000 * by_hand / 989e12)
    assert gpu_check.mfu(20_000, by_hand, 989.0) == pytest.approx(0.2087, abs=1e-4)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA A10G", None),
    ],
)
def test_peak_flops_by_device_name(gpu_check, name, peak):
    assert gpu_check.peak_tflops(name) == peak


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.checks == list(gpu_check.CHECKS) and args.out == Path("gpu_check.json")
    assert (args.steps, args.seq_length, args.fp8_recipe, args.grpo_shape) == (50, 4096, "delayed", "1.5b")
    args = gpu_check.parse_args(["--out", "r.json", "--checks", "sft_throughput,thd_packed_loss"])
    assert args.checks == ["sft_throughput", "thd_packed_loss"] and args.out == Path("r.json")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--checks", "sft_throughput,warp_drive"])
    assert "unknown check(s) ['warp_drive']" in capsys.readouterr().err
    assert set(gpu_check.CHECKS) == set(gpu_check.CHECK_FUNCTIONS) == set(gpu_check.TARGET_TEXT)


def test_table_shows_results_beside_targets_and_errors_by_their_last_line(gpu_check):
    results = [
        gpu_check.CheckResult("thd_packed_loss", "pass", 12.4, "mean |Δ| 0.0021", "mean |Δ| ≤ 0.01"),
        gpu_check.CheckResult(
            "sft_throughput",
            "error",
            3.0,
            target="MFU ≥ 45 %",
            error="Traceback …\n  ...\nRuntimeError: CUDA OOM\n",
        ),
    ]
    lines = gpu_check.format_table(results).splitlines()
    assert [cell.strip() for cell in lines[0].split(" | ")] == ["check", "status", "result", "target", "s"]
    assert set(lines[1]) <= {"-", "+"}
    assert "pass" in lines[2] and "mean |Δ| 0.0021" in lines[2] and lines[2].endswith("| 12")
    assert "RuntimeError: CUDA OOM" in lines[3] and "Traceback" not in lines[3]
    assert len({line.index(" | ") for line in (lines[0], lines[2], lines[3])}) == 1  # aligned


def test_without_a_gpu_it_says_so(gpu_check, capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
