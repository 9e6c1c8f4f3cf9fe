"""`benchmarks/gpu_check.py` measures on a GPU; what a CPU can check is its arithmetic (FLOPs, MFU
against the spec sheet and a measured peak, the learning criterion), which checks it picks where, and
its plumbing: children that hang, raise a sticky CUDA error or crash are recorded and the next check
runs, and the machine's record is in the JSON before the first check starts. The plumbing tests run
the real parent and the real child code with stand-in check functions; the slow test runs the real
portable checks on the CPU (`--device cpu`, tiny shapes)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"

# Stand-in checks, imported both by the test (the parent's registry) and by the children (their code).
FAKES = '''
import dataclasses
import os
import sys
import time

import gpu_check
from gpu_check_runner import record_partial


def probe():
    importable = {"megatron-core": True, "transformers": True, "transformer-engine": False, "vllm": False}
    return {"torch": "stand-in", "cuda_available": True, "device": "NVIDIA H200", "importable": importable}


def hang(args):
    """Copies the report as it stands while the first check runs, keeps a partial number, hangs."""
    record_partial(measured_so_far=1)
    with open(os.environ["GPU_CHECK_SEEN"] + ".pid", "w") as pid:
        pid.write(str(os.getpid()))
    with open(os.environ["GPU_CHECK_SEEN"], "w") as seen, open(args.out) as report:
        seen.write(report.read())
    time.sleep(600)


def sticky(args):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def crash(args):
    print("RuntimeError: CUDA error: misaligned address", file=sys.stderr, flush=True)
    os._exit(134)


def ok(args):
    import importlib.util

    bundle = importlib.util.find_spec("bundle_marker") is not None  # the portable test's stand-in bundle
    return True, "fine", {"portable": args.portable, "peak": args.measured_peak_tflops, "bundle": bundle}


def checks(kind):
    Check = gpu_check.Check
    if kind == "registry":  # the real checks, each passing at once
        return {
            name: dataclasses.replace(check, run="gpu_check_fakes:ok", process_group=False)
            for name, check in gpu_check.CHECKS.items()
        }
    timeouts = {"hang": 3, "sticky": 60, "crash": 60, "ok": 60}
    if kind == "terminate":  # a hang that only the run's own end can stop
        timeouts = {"hang": 300, "ok": 60}
    return {
        name: Check(name, f"gpu_check_fakes:{name}", "a target", 1, timeout, needs=(), process_group=False)
        for name, timeout in timeouts.items()
    }
'''
DRIVER = """
import os
import signal
import sys

sys.path[:0] = [{benchmarks!r}, {here!r}]
import gpu_check
import gpu_check_env
import gpu_check_fakes

gpu_check.CHECKS = gpu_check_fakes.checks(os.environ["GPU_CHECK_FAKES"])
gpu_check.SCRIPT = os.path.abspath(__file__)  # when this driver is the parent, its children are drivers too
gpu_check_env.probe = gpu_check_fakes.probe
signal.signal(signal.SIGTERM, gpu_check._terminated)  # as the script's own entry does
code = gpu_check.main(sys.argv[1:])
sys.stdout.flush()
os._exit(code)
"""


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (registered while it runs: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its sibling modules
    yield module
    del sys.modules["gpu_check"]


@pytest.fixture
def stand_ins(gpu_check, tmp_path, monkeypatch):
    """Children run the stand-in checks: the parent starts `driver.py` instead of the script."""
    (tmp_path / "gpu_check_fakes.py").write_text(FAKES)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(benchmarks=str(BENCHMARKS), here=str(tmp_path)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("gpu_check_fakes", None)
    import gpu_check_fakes

    monkeypatch.setattr(gpu_check, "SCRIPT", driver)
    monkeypatch.setenv("GPU_CHECK_SEEN", str(tmp_path / "seen.json"))

    def use(kind: str) -> None:
        monkeypatch.setenv("GPU_CHECK_FAKES", kind)
        monkeypatch.setattr(gpu_check, "CHECKS", gpu_check_fakes.checks(kind))

    yield use
    sys.modules.pop("gpu_check_fakes", None)


# ── arithmetic ───────────────────────────────────────────────────────────────────────────────────────


def _by_hand_1_5b(seq: float) -> float:
    hidden, ffn, layers, heads, kv_heads, head_dim, vocab = 1536, 8960, 28, 12, 2, 128, 151_936
    per_layer = (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * ffn  # gate, up, down
    )
    matrices = layers * per_layer + vocab * hidden  # the output layer is the tied embedding
    attention = 4 * layers * heads * head_dim * seq  # QKᵀ and AV over `seq` keys per token
    return 3 * (2 * matrices + attention)  # forward, and backward twice the forward


def test_flops_and_mfu_of_the_1_5b_shape_match_a_hand_count(gpu_check):
    from gpu_check_models import hf_config
    from gpu_check_throughput import mfu, packed_flops_per_token, sft_flops_per_token

    hf = hf_config("1.5b")
    by_hand = _by_hand_1_5b((4096 + 1) / 2)
    assert sft_flops_per_token(hf, 4096) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(1.0319e10, rel=1e-4)
    # packed samples of 1,000 and 3,000 tokens: (1000·1001/2 + 3000·3001/2) / 4000 keys per token
    keys = (1000 * 1001 / 2 + 3000 * 3001 / 2) / 4000
    assert packed_flops_per_token(hf, [1000, 3000]) == pytest.approx(_by_hand_1_5b(keys), rel=1e-12)
    assert packed_flops_per_token(hf, [4096]) == pytest.approx(by_hand, rel=1e-12)
    # 20,000 tokens/s against the spec sheet's 989 TFLOP/s and a measured 790
    assert mfu(20_000, by_hand, 989.0) == pytest.approx(0.2087, abs=1e-4)
    assert mfu(20_000, by_hand, 790.0) == pytest.approx(20_000 * 1.0319e10 / 790e12, rel=1e-4)
    assert mfu(20_000, by_hand, 790.0) == pytest.approx(0.2612, abs=1e-4)
    assert mfu(20_000, by_hand, None) is None


def test_the_matmul_peak_counts_two_n_cubed_flops_per_product(gpu_check):
    from gpu_check_throughput import matmul_tflops

    # 20 products of 8192³ in 27.8 ms: 20 · 2 · 8192³ / 0.0278 s = 791 TFLOP/s
    assert matmul_tflops(8192, 20, 0.0278) == pytest.approx(20 * 2 * 8192**3 / 0.0278 / 1e12)
    assert matmul_tflops(8192, 20, 0.0278) == pytest.approx(791.0, abs=0.5)


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
def test_spec_sheet_peak_by_device_name(gpu_check, name, peak):
    from gpu_check_throughput import spec_peak_tflops

    assert spec_peak_tflops(name) == peak


def _curve(first: float, last: float, steps: int = 50) -> list[float]:
    return [
        first + (last - first) * (1 - math.exp(-i / 10)) / (1 - math.exp(-(steps - 1) / 10))
        for i in range(steps)
    ]


def test_learning_criterion(gpu_check):
    from gpu_check_layers import judge_learning

    healthy = {"fp32": _curve(12.0, 10.0), "bf16": [x * 1.005 for x in _curve(12.0, 10.0)]}
    passed, failures, numbers = judge_learning(healthy)
    assert passed and not failures and numbers["bf16_vs_fp32"] == pytest.approx(0.005)
    flat = {"fp32": _curve(12.0, 10.0), "bf16": _curve(12.0, 11.9)}  # bf16 stalls: too far from fp32 too
    passed, failures, _ = judge_learning(flat)
    assert not passed and any("bf16 did not learn" in f for f in failures)
    assert any("bf16 " in f and "from fp32" in f for f in failures)
    drifting = {"fp32": _curve(12.0, 10.0), "bf16": [x * 1.04 for x in _curve(12.0, 10.0)]}  # 4 % above
    passed, failures, _ = judge_learning(drifting)
    assert not passed and failures == ["bf16 4.00% from fp32 (> 2%)"]
    diverged = {"fp32": _curve(12.0, 10.0), "bf16": [*_curve(12.0, 10.0)[:-1], math.nan]}
    assert judge_learning(diverged)[1] == ["bf16 loss is not finite"]
    fp8 = {**healthy, "fp8": [x * 1.05 for x in healthy["bf16"]]}
    assert not judge_learning(fp8)[0]
    with pytest.raises(ValueError, match="at least 20 steps"):
        judge_learning({"fp32": [1.0] * 19, "bf16": [1.0] * 19})


# ── arguments, plan, table ───────────────────────────────────────────────────────────────────────────


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.checks == list(gpu_check.CHECKS) and args.out == Path("gpu_check.json")
    assert (args.steps, args.seq_length, args.fp8_recipe, args.shape) == (50, 4096, "delayed", "1.5b")
    assert (args.portable, args.device, args.matmul_size, args.cli_dtype) == (False, "cuda", 8192, "bfloat16")
    args = gpu_check.parse_args(
        ["--out", "r.json", "--checks", "sft_throughput,thd_packed_loss", "--portable"]
    )
    assert (
        args.checks == ["sft_throughput", "thd_packed_loss"] and args.out == Path("r.json") and args.portable
    )
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--checks", "sft_throughput,warp_drive"])
    assert "unknown check(s) ['warp_drive']" in capsys.readouterr().err


def test_the_portable_plan_runs_what_needs_neither_te_nor_vllm(gpu_check):
    importable = {"megatron-core": True, "transformers": True, "transformer-engine": False, "vllm": False}
    plan = gpu_check.plan(list(gpu_check.CHECKS), True, "cuda", importable, {"status": "installed"})
    reasons = {check.name: reason for check, reason in plan}
    assert [name for name, reason in reasons.items() if reason is None] == [
        "matmul_peak",
        "sft_cli_step",
        "grpo_cli_step",
        "sft_throughput",
        "sft_learning",
    ]
    assert reasons["te_vs_local_logits"] == "needs transformer-engine, which is not installed"
    assert reasons["thd_packed_loss"] == "needs transformer-engine, which is not installed"
    assert reasons["grpo_colocated_vllm"] == "needs vllm, which is not installed"
    # with everything installed, --portable still leaves them out, and says why
    everything = dict.fromkeys(importable, True)
    reasons = {c.name: r for c, r in gpu_check.plan(list(gpu_check.CHECKS), True, "cuda", everything, {})}
    assert reasons["te_vs_local_logits"].startswith("not in the portable run")
    # without megatron-core (no bundle) nothing but the matmul runs, and the reason names the bundle
    without = {**importable, "megatron-core": False}
    reasons = {
        c.name: r for c, r in gpu_check.plan(["sft_cli_step"], True, "cuda", without, {"status": "absent"})
    }
    assert "needs megatron-core" in reasons["sft_cli_step"] and "bundle: absent" in reasons["sft_cli_step"]
    # the full run on a GPU machine with TE and vLLM runs everything; --device cpu never runs (e)
    assert all(r is None for _, r in gpu_check.plan(list(gpu_check.CHECKS), False, "cuda", everything, {}))
    reasons = {c.name: r for c, r in gpu_check.plan(list(gpu_check.CHECKS), False, "cpu", everything, {})}
    assert reasons["grpo_colocated_vllm"] == "needs a GPU (--device cpu)"


def test_sticky_cuda_errors_are_recognised(gpu_check):
    from gpu_check_runner import sticky_cuda_error

    text = "Traceback …\n  x = y @ z\nRuntimeError: CUDA error: an illegal memory access was encountered\n"
    assert sticky_cuda_error(text) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert sticky_cuda_error("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB") is None
    assert sticky_cuda_error("AssertionError: keys differ") is None


def test_table_shows_results_beside_targets_errors_by_their_last_line_and_skip_reasons(gpu_check):
    from gpu_check_runner import CheckResult, format_table

    results = [
        CheckResult("thd_packed_loss", "pass", 12.4, "mean |Δ| 0.0021", "mean |Δ| ≤ 0.01"),
        CheckResult(
            "sft_throughput",
            "error",
            3.0,
            target="MFU ≥ 35 %",
            error="Traceback …\n  ...\nRuntimeError: boom\n",
        ),
        CheckResult(
            "te_vs_local_logits", "skipped", summary="needs transformer-engine, which is not installed"
        ),
        CheckResult("sft_learning", "timeout", 420.0, error="no result within 420 s: the check was stopped"),
    ]
    lines = format_table(results).splitlines()
    assert [cell.strip() for cell in lines[0].split(" | ")] == ["check", "status", "result", "target", "s"]
    assert set(lines[1]) <= {"-", "+"}
    assert "pass" in lines[2] and "mean |Δ| 0.0021" in lines[2] and lines[2].endswith("| 12")
    assert "RuntimeError: boom" in lines[3] and "Traceback" not in lines[3]
    assert "needs transformer-engine" in lines[4] and "no result within 420 s" in lines[5]
    assert len({line.index(" | ") for line in (lines[0], lines[2], lines[3])}) == 1  # aligned


# ── the parent and its children ──────────────────────────────────────────────────────────────────────


def test_without_a_gpu_it_says_so_and_keeps_the_machine_record(gpu_check, capsys, tmp_path, monkeypatch):
    """Real probe; no GPU visible to it (as on this CPU, and on a GPU host with none made visible)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out), "--workdir", str(tmp_path / "work")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["results"] == [] and report["environment"]["probe"]["cuda_available"] is False
    assert report["environment"]["python"] == sys.version.split()[0] and "git" in report["environment"]


def test_a_hang_a_sticky_cuda_error_and_a_crash_are_recorded_and_the_next_check_runs(
    gpu_check, stand_ins, tmp_path, capsys
):
    stand_ins("plumbing")
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out), "--workdir", str(tmp_path / "work")]) == 1
    # what the report held while the first check ran: the machine's record, no results yet
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["results"] == [] and seen["environment"]["probe"]["device"] == "NVIDIA H200"
    assert seen["environment"]["argv"] == ["--out", str(out), "--workdir", str(tmp_path / "work")]
    hang, sticky, crash, ok = json.loads(out.read_text())["results"]
    assert hang["status"] == "timeout" and hang["returncode"] is None and 3 <= hang["seconds"] < 30
    assert hang["metrics"] == {"measured_so_far": 1}  # kept from the child that was stopped
    assert sticky["status"] == "error" and sticky["returncode"] == 1
    assert sticky["sticky_cuda_error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in sticky["error"]
    assert crash["status"] == "error" and crash["returncode"] == 134 and "without a result" in crash["error"]
    assert crash["sticky_cuda_error"] == "RuntimeError: CUDA error: misaligned address"
    assert ok["status"] == "pass" and ok["summary"] == "fine"
    assert Path(ok["log"]).exists() and Path(ok["log"]).parent == tmp_path / "r_logs"
    assert re.search(r"^hang +\| timeout +\| no result within 3 s", capsys.readouterr().out, re.M)


def test_portable_mode_without_megatron_installs_the_bundle_and_skips_te_and_vllm(
    gpu_check, stand_ins, tmp_path, monkeypatch
):
    """megatron-core "absent" before the bundle: portable mode, the bundle's install timed and recorded,
    the portable checks run (told they are portable), TE and vLLM checks skipped with the reason."""
    import gpu_check_env

    stand_ins("registry")
    monkeypatch.setattr(gpu_check, "installed", lambda package: package != "megatron-core")
    (tmp_path / "bundle").mkdir()
    installs = []

    def install_bundle(bundle, python, target):
        installs.append((bundle, python, target))
        target.mkdir(parents=True)
        (target / "bundle_marker.py").write_text("")  # importable by the children if on their path

    fake = types.SimpleNamespace(install_bundle=install_bundle)
    monkeypatch.setattr(gpu_check_env, "_load_bundle_module", lambda: fake)
    out = tmp_path / "r.json"
    argv = ["--out", str(out), "--bundle", str(tmp_path / "bundle"), "--workdir", str(tmp_path / "w")]
    assert gpu_check.main(argv) == 0
    assert installs == [(tmp_path / "bundle", sys.executable, tmp_path / "w" / "bundle_site")]
    report = json.loads(out.read_text())
    environment = report["environment"]
    assert environment["mode"] == {"portable": True, "why": "megatron-core is not installed"}
    assert environment["bundle"]["status"] == "installed" and environment["bundle"]["seconds"] >= 0
    statuses = {r["name"]: (r["status"], r["summary"]) for r in report["results"]}
    assert statuses == {
        "matmul_peak": ("pass", "fine"),
        "sft_cli_step": ("pass", "fine"),
        "grpo_cli_step": ("pass", "fine"),
        "te_vs_local_logits": ("skipped", "needs transformer-engine, which is not installed"),
        "thd_packed_loss": ("skipped", "needs transformer-engine, which is not installed"),
        "sft_throughput": ("pass", "fine"),
        "sft_learning": ("pass", "fine"),
        "grpo_colocated_vllm": ("skipped", "needs vllm, which is not installed"),
    }
    ran = [r for r in report["results"] if r["status"] == "pass"]
    assert all(r["metrics"]["portable"] and r["metrics"]["bundle"] for r in ran)  # on the children's path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_terminated_run_stops_its_child_and_keeps_what_it_measured(gpu_check, stand_ins, tmp_path):
    """SIGTERM to the run (a job's time limit): the running check's child is stopped with it, and the
    report keeps that check, with what it had measured."""
    stand_ins("terminate")
    out, seen = tmp_path / "r.json", tmp_path / "seen.json"
    command = [sys.executable, str(gpu_check.SCRIPT), "--out", str(out), "--workdir", str(tmp_path / "w")]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not seen.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
        assert seen.exists(), run.communicate()[1]
        run.terminate()
        assert run.wait(30) == 128 + signal.SIGTERM
        child = int(Path(f"{seen}.pid").read_text())
        alive = _alive(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the hanging check outlived the run"
    finally:
        if run.poll() is None:
            run.kill()
    (hang,) = json.loads(out.read_text())["results"]  # the check after it never started
    assert hang["status"] == "timeout" and hang["error"].startswith("stopped with the whole run")
    assert hang["metrics"] == {"measured_so_far": 1}


def test_checks_that_would_not_fit_in_the_budget_are_skipped(gpu_check, stand_ins, tmp_path):
    stand_ins("plumbing")
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out), "--budget-s", "5", "--workdir", str(tmp_path / "w")]) == 0
    results = json.loads(out.read_text())["results"]
    assert {r["status"] for r in results} == {"skipped"}
    assert all(r["summary"].startswith("not started: ") for r in results)


def test_a_failed_bundle_install_is_recorded(gpu_check, tmp_path, monkeypatch):
    import gpu_check_env

    assert gpu_check_env.install_bundle_timed(tmp_path / "none", tmp_path / "site")["status"] == "absent"
    (tmp_path / "b").mkdir()

    def broken(bundle, python, target):
        raise RuntimeError("pip: no matching distribution for hydra-core")

    monkeypatch.setattr(
        gpu_check_env, "_load_bundle_module", lambda: types.SimpleNamespace(install_bundle=broken)
    )
    record = gpu_check_env.install_bundle_timed(tmp_path / "b", tmp_path / "site")
    assert record["status"] == "error" and "no matching distribution" in record["error"]


@pytest.mark.slow
def test_the_portable_run_end_to_end_on_the_cpu(tmp_path):
    """The real portable checks, on the CPU at tiny sizes: the CLI steps through the entry points, the
    matmul peak, throughput and the learning check (its criterion met at the tiny shape)."""
    out = tmp_path / "r.json"
    command = [sys.executable, str(SCRIPT), "--portable", "--device", "cpu", "--shape", "tiny"]
    command += ["--cli-dtype", "float32", "--bundle", str(tmp_path / "no_bundle"), "--matmul-size", "256"]
    command += ["--seq-length", "256", "--learning-seq-length", "256", "--steps", "20", "--timed-steps", "2"]
    command += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    statuses = {r["name"]: r["status"] for r in report["results"]}
    assert done.returncode == 0, (statuses, done.stdout[-3000:], done.stderr[-3000:])
    assert statuses == {
        "matmul_peak": "pass",
        "sft_cli_step": "pass",
        "grpo_cli_step": "pass",
        "te_vs_local_logits": "skipped",
        "thd_packed_loss": "skipped",
        "sft_throughput": "pass",
        "sft_learning": "pass",
        "grpo_colocated_vllm": "skipped",
    }
    results = {r["name"]: r for r in report["results"]}
    assert results["sft_cli_step"]["metrics"]["checkpoint_written"]
    assert results["grpo_cli_step"]["metrics"]["last_metrics"]["grad_norm"] > 0
    throughput = results["sft_throughput"]["metrics"]
    assert (
        throughput["local_packed"]["tokens_per_s"] > 0 and throughput["transformers_sdpa"]["tokens_per_s"] > 0
    )
    assert throughput["peak_tflops"]["measured"] == report["environment"]["measured_matmul_tflops"]
    assert results["sft_learning"]["metrics"]["bf16_vs_fp32"] < 0.02
    assert report["environment"]["bundle"]["status"] == "absent"
