"""The GPU path, checked and measured in one command on one H100/H200.

On a cluster node (`make setup-gpu`: megatron-core, Transformer Engine, vLLM):

    python benchmarks/gpu_check.py --out gpu_check.json

Portable (`--portable`, and automatically when megatron-core is not installed): on a machine with only
a CUDA torch (≥ 2.11, Python 3.12) and this source tree, the pure-Python packages the project lacks are
installed first from the bundle in `build/gpu_bundle/` (`benchmarks/gpu_bundle.py` builds it) into a
folder of the work directory that the checks find first on PYTHONPATH — the machine's Python and its
torch stay as they were; the install is timed and recorded — and the checks that need neither
Transformer Engine nor vLLM run; the others are reported as skipped, with the reason. The project is
imported from the source tree (the repository on PYTHONPATH), without `pip install -e`:

    python benchmarks/gpu_check.py --portable --out $OUT/gpu_check.json

How it runs. The machine's record (Python, platform, git commit, driver; then torch, CUDA, the device,
its capability, package versions, the bundle's install time) is written to the JSON before the first
check. Every check runs in a child process of its own with a time limit, inside an overall budget
(`--budget-s`; a check that would not start with time left is skipped): a check that hangs is
stopped and recorded as `timeout`, one that raises or crashes as `error` (a CUDA error that poisons
its process is named in `sticky_cuda_error`), and the next check runs in a fresh process. The JSON is
rewritten after every check (with each child's partial measurements if it was cut off), each child's
output goes to `<out>_logs/NAME.log`, and a table of results beside their targets is printed at the
end. Exit code: 0 when every check that ran passed, 1 otherwise, 2 without a GPU. Models have random
weights. `--device cpu --shape tiny` runs the same plumbing on a CPU (what the tests do; its numbers
say nothing about a GPU).

The checks, in the order they run; (P) marks the portable run's. Estimates of seconds on one H200,
process start included, are estimates: none has been measured yet (docs/benchmarks.md).

matmul_peak (P, ~15 s): the best TFLOP/s of bf16 8192³ GEMMs, the measured peak that (d) reports MFU
    against beside the spec sheet's. Passes unless it exceeds the spec sheet (a timing error).
sft_cli_step (P, ~60 s): one `xr-nemo sft` step through the CLI on a tiny synthetic model in bf16,
    checkpoint written (`gpu_check_entry_points.py`).
grpo_cli_step (P, ~75 s): one `xr-nemo grpo` step through the CLI, tiny model, bf16, an engine that
    needs no vLLM in the portable run (the reference engine; vLLM in the full run); the step must make
    an update (non-zero gradient norm).
(a) te_vs_local_logits (~60 s): the local model writes a checkpoint, the Transformer Engine model loads
    it (their checkpoint keys must be equal), and both give the same bf16 logits, on the tiny shape and
    a Qwen2.5-1.5B-shaped Qwen2.5-VL: within 3 % (relative L2) of each other, and TE no further from
    the fp32 logits than 1.5 × the local bf16 ones are.
(b) thd_packed_loss (~45 s): three sequences packed in one row reach TE as THD (`packed_seq_params`)
    and give the per-token losses of the three run one by one: mean difference ≤ 0.01, sums within 0.1 %.
(d) sft_throughput (P ~120 s; full ~180 s): tokens/s, MFU and peak memory of SFT steps of the 1.5B
    shape, packed (as SFT trains) and unpacked: TE bf16, TE FP8, the local layers, Transformers + sdpa
    (`gpu_check_throughput.py`). MFU counts the model's training FLOPs (`xr-nemo plan`'s formula; a
    packed run its real tokens and per-sample attention) against both the spec sheet's dense bf16
    peak and the measured matmul peak. Targets (with TE): TE bf16 packed ≥ 35 % MFU of the measured
    peak, TE bf16 ≥ 1.3 × Transformers, FP8 ≥ 1.3 × TE bf16. Portable: measured, no target.
(c) sft_learning (P ~90 s; full ~150 s): 50 SFT steps of the 1.5B shape at lr 1e-4 on a learnable
    task (blocks of 64 tokens from 2,048 ids, repeated through each row), from the same weights on the
    same batches, in fp32 (TF32 matmuls: the reference), bf16 and, with TE, FP8. Criterion: bf16 is
    judged against the fp32 run, not against a fixed fraction of its own first loss, so a healthy bf16
    run passes however fast this task is learned at this rate: its mean loss over the last 10 steps
    within 2 % of fp32's (FP8's within 3 % of bf16's); every loss finite; and, as a floor any learning
    run clears, each run's last-10 mean ≤ 0.95 × its first-10 mean (a stand-in of this check at lr 1e-4
    ended at 0.84 × its first loss, which the old "< 0.8 × the first" failed). Portable: local layers,
    fp32 and bf16.
(e) grpo_colocated_vllm (~120 s): one GRPO step with an in-process vLLM engine (`gpu_check_grpo.py`).

Estimated totals on one H200: portable ≈ 7 min (bundle install ~45 s, probe ~10 s, then 15 + 60 + 75
+ 120 + 90 s; `--budget-s` 540 by default, so a 600 s hard limit still leaves a minute); full ≈ 12 min
(budget 1500 s).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_check_* modules beside this one

from gpu_check_env import DEFAULT_BUNDLE, REPO, host_environment, install_bundle_timed, installed
from gpu_check_layers import BF16_LOSS_TOLERANCE, FP8_LOSS_TOLERANCE, LEARNED
from gpu_check_runner import (
    CheckResult,
    Report,
    format_table,
    interrupted,
    run_child,
    start_outcome,
    write_outcome,
)
from gpu_check_throughput import TARGETS as THROUGHPUT_TARGETS

SCRIPT = Path(__file__).resolve()
PROBE_TIMEOUT_S = 180
MIN_START_S = 20  # a check is not started with less time than this left in the budget
BUDGET_S = {"portable": 540, "full": 1500}
TARGETS = {
    **THROUGHPUT_TARGETS,
    "learning_last10_over_first10_at_most": LEARNED,
    "bf16_vs_fp32_last10_loss_within": BF16_LOSS_TOLERANCE,
    "fp8_vs_bf16_last10_loss_within": FP8_LOSS_TOLERANCE,
}


@dataclass(frozen=True)
class Check:
    name: str
    run: str  # "module:function" among the gpu_check_* modules
    target: str
    estimate_s: int  # on one H200, process start included: an estimate until measured
    timeout_s: int
    needs: tuple[str, ...] = ("megatron-core",)  # packages (gpu_check_env.MODULES), or "gpu"
    portable: bool = False  # part of the portable run
    process_group: bool = True  # joins a one-process group first (megatron-core's parallel state)


CHECKS: dict[str, Check] = {
    check.name: check
    for check in (
        Check(
            "matmul_peak",
            "gpu_check_throughput:check_matmul_peak",
            "≤ spec sheet",
            15,
            120,
            needs=(),
            portable=True,
            process_group=False,
        ),
        Check(
            "sft_cli_step",
            "gpu_check_entry_points:check_sft_entry_point",
            "exit 0, step 1 finite, checkpoint",
            60,
            300,
            needs=("megatron-core", "transformers"),
            portable=True,
            process_group=False,
        ),
        Check(
            "grpo_cli_step",
            "gpu_check_entry_points:check_grpo_entry_point",
            "exit 0, step 1 finite, grad_norm > 0",
            75,
            300,
            needs=("megatron-core", "transformers"),
            portable=True,
            process_group=False,
        ),
        Check(
            "te_vs_local_logits",
            "gpu_check_layers:check_logits",
            "keys equal; TE vs local ≤ 3%",
            60,
            300,
            needs=("megatron-core", "transformer-engine"),
        ),
        Check(
            "thd_packed_loss",
            "gpu_check_layers:check_packed",
            "mean |Δ| ≤ 0.01, sums within 0.1%",
            45,
            300,
            needs=("megatron-core", "transformer-engine"),
        ),
        Check(
            "sft_throughput",
            "gpu_check_throughput:check_throughput",
            "TE bf16 packed ≥ 35% MFU of measured peak, ≥ 1.3× HF sdpa; FP8 ≥ 1.3× bf16",
            120,
            420,
            needs=("megatron-core", "transformers"),
            portable=True,
        ),
        Check(
            "sft_learning",
            "gpu_check_layers:check_learning",
            "last-10 ≤ 0.95× first-10; bf16 within 2% of fp32, FP8 within 3% of bf16",
            90,
            420,
            portable=True,
        ),
        Check(
            "grpo_colocated_vllm",
            "gpu_check_grpo:check_grpo",
            "logprobs after refit: mean |Δ| ≤ 0.02; sleep frees memory",
            120,
            420,
            needs=("megatron-core", "vllm", "gpu"),
        ),
    )
}


# ── arguments ────────────────────────────────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument(
        "--checks", type=_check_names, default=list(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}"
    )
    parser.add_argument("--portable", action="store_true", help="install the bundle, run the portable checks")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="the portable bundle (wheels/)")
    parser.add_argument("--budget-s", type=float, help="overall seconds (default: 540 portable, 1500 full)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: test the plumbing")
    parser.add_argument("--shape", choices=["1.5b", "tiny"], default="1.5b", help="(c), (d): model shape")
    parser.add_argument("--peak-tflops", type=float, help="spec-sheet dense bf16 peak (default: by name)")
    parser.add_argument("--matmul-size", type=int, default=8192, help="of the measured matmul peak")
    parser.add_argument("--seq-length", type=int, default=4096, help="(d): tokens per row")
    parser.add_argument("--micro-batch", type=int, default=2, help="(c), (d): rows per step")
    parser.add_argument("--steps", type=int, default=50, help="(c): SFT steps per precision")
    parser.add_argument("--learning-seq-length", type=int, default=2048, help="(c): tokens per row")
    parser.add_argument("--timed-steps", type=int, default=10, help="(d): steps timed after 3 warm-up steps")
    parser.add_argument(
        "--fp8-recipe", choices=["delayed", "tensorwise", "blockwise", "mxfp8"], default="delayed"
    )
    parser.add_argument("--grpo-shape", choices=["1.5b", "tiny"], default="1.5b", help="(e): model layers")
    parser.add_argument("--sleep-level", type=int, choices=[1, 2], default=1, help="(e): vLLM's sleep level")
    parser.add_argument(
        "--cli-dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="the CLI steps' model.dtype (float32: a CPU test, where bf16 generation is slow)",
    )
    parser.add_argument(
        "--grpo-cli-engine", choices=["auto", "reference", "vllm"], default="auto", help="grpo_cli_step"
    )
    parser.add_argument("--workdir", type=Path, help="for checkpoints and run directories (default: temp)")
    # set by the parent for its children
    parser.add_argument("--only", choices=list(CHECKS), help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measured-peak-tflops", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _check_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown check(s) {unknown or text!r}; choose from {', '.join(CHECKS)}"
        )
    return names


# ── the plan ─────────────────────────────────────────────────────────────────────────────────────────


def skip_reason(
    check: Check, portable: bool, device: str, importable: dict[str, bool], bundle: dict
) -> str | None:
    """Why `check` does not run here, or None when it does."""
    if "gpu" in check.needs and device != "cuda":
        return "needs a GPU (--device cpu)"
    missing = [package for package in check.needs if package != "gpu" and not importable.get(package)]
    if missing:
        reason = f"needs {', '.join(missing)}, which is not installed"
        if "megatron-core" in missing or "transformers" in missing:
            reason += f" (bundle: {bundle.get('status', 'not used')}; see benchmarks/gpu_bundle.py)"
        return reason
    if portable and not check.portable:
        return "not in the portable run (--portable): it needs Transformer Engine or vLLM"
    return None


def plan(
    names: list[str], portable: bool, device: str, importable: dict[str, bool], bundle: dict
) -> list[tuple[Check, str | None]]:
    """[(check, skip reason or None)] in the order they run."""
    return [
        (CHECKS[name], skip_reason(CHECKS[name], portable, device, importable, bundle))
        for name in CHECKS
        if name in names
    ]


# ── the parent ───────────────────────────────────────────────────────────────────────────────────────


def child_env(device: str, bundle: dict | None = None) -> dict[str, str]:
    """The children's environment: the source tree and an installed bundle importable (before the
    machine's own packages), output unbuffered, and with `--device cpu` no GPU visible at all."""
    env = dict(os.environ)
    paths = [str(REPO), bundle["target"] if bundle and bundle.get("status") == "installed" else None]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def child_command(name: str, argv: list[str], extra: list[str]) -> list[str]:
    """How the parent runs check `name` (or the probe): this script again, with the parent's options."""
    role = ["--probe"] if name == "probe" else ["--only", name]
    return [sys.executable, str(SCRIPT), *argv, *role, *extra]


def _mode(args: argparse.Namespace) -> tuple[bool, str]:
    if args.portable:
        return True, "--portable"
    if not installed("megatron-core"):
        return True, "megatron-core is not installed"
    return False, "megatron-core is installed"


def _skipped(check: Check, reason: str) -> CheckResult:
    return CheckResult(check.name, "skipped", summary=reason, target=check.target)


def _record_machine(args, argv: list[str], report: Report, logs: Path) -> tuple[bool, dict, dict] | None:
    """The machine's record, in the report before any check: the host, the mode, the bundle's install
    (portable), then the probe. (portable, bundle, probe), or None when no check can run here."""
    report.environment = host_environment(argv)
    report.write()  # before anything can go wrong
    portable, why = _mode(args)
    report.environment["mode"] = {"portable": portable, "why": why}
    bundle = {"status": "not used"}
    if portable:
        bundle = install_bundle_timed(args.bundle, args.workdir / "bundle_site")
    report.environment["bundle"] = bundle
    report.write()
    env = child_env(args.device, bundle)
    result = run_child("probe", child_command("probe", argv, []), PROBE_TIMEOUT_S, logs, env)
    probed = result.metrics if result.status == "pass" else {}
    report.environment["probe"] = probed or {"error": result.error, "output_tail": result.output_tail}
    report.write()
    if result.status != "pass":
        print(
            f"gpu_check: the probe of torch and the device failed ({_shown(result)}); its log: {logs}. "
            "Check that `python -c 'import torch'` works in this Python.",
            file=sys.stderr,
        )
        return None
    if args.device == "cuda" and not probed.get("cuda_available"):
        print(
            f"gpu_check needs a CUDA GPU, and torch {probed.get('torch')} sees none here "
            f"(record in {args.out}). On a cluster node: make setup-gpu; to test this script "
            "on a CPU: --device cpu --shape tiny",
            file=sys.stderr,
        )
        return None
    return portable, bundle, probed


def _run_check(
    check: Check, argv: list[str], extra: list[str], seconds: float, logs: Path, env: dict[str, str]
) -> CheckResult:
    print(f"[gpu_check] {check.name} (≤ {seconds:.0f} s) …", flush=True)
    result = run_child(check.name, child_command(check.name, argv, extra), seconds, logs, env)
    result.target = check.target
    return result


def run_parent(args: argparse.Namespace, argv: list[str]) -> int:
    """Record the machine, then run the planned checks one child each within the budget; the report is
    rewritten after each."""
    start = time.perf_counter()
    report, logs = Report(args.out, TARGETS), args.out.with_name(args.out.stem + "_logs")
    recorded = _record_machine(args, argv, report, logs)
    if recorded is None:
        return 2
    portable, bundle, probed = recorded
    budget = args.budget_s or BUDGET_S["portable" if portable else "full"]
    extra = ["--workdir", str(args.workdir)] + (["--portable"] if portable else [])
    for check, reason in plan(args.checks, portable, args.device, probed.get("importable", {}), bundle):
        left = budget - (time.perf_counter() - start)
        if reason is None and left < MIN_START_S:
            reason = f"not started: {left:.0f} s left of --budget-s {budget:.0f}"
        if reason is None:
            env = child_env(args.device, bundle)
            try:
                result = _run_check(check, argv, extra, min(check.timeout_s, left), logs, env)
            except BaseException as stop:  # SIGTERM or Ctrl-C: keep what the check had measured
                report.add(interrupted(check.name, logs, f"stopped with the whole run ({stop!r})"))
                raise
        else:
            result = _skipped(check, reason)
        peak = result.metrics.get("measured_tflops") if check.name == "matmul_peak" else None
        if peak and result.status == "pass":  # measured once, then handed to the checks after it
            report.environment["measured_matmul_tflops"] = peak
            extra += ["--measured-peak-tflops", str(peak)]
        report.add(result)
        print(f"[gpu_check] {check.name}: {result.status} — {_shown(result)}", flush=True)
    print(format_table(report.results))
    print(f"report: {args.out}; logs: {logs}")
    return 0 if all(result.status in ("pass", "skipped") for result in report.results) else 1


def _shown(result: CheckResult) -> str:
    if result.error and result.status in ("error", "timeout"):
        return result.sticky_cuda_error or result.error.strip().splitlines()[-1]
    return result.summary


# ── a child ──────────────────────────────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def _process_group(needed: bool):
    """A process group of one (NCCL on a GPU) with megatron-core's parallel state, for the check."""
    if not needed:
        yield
        return
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown

    initialize(ParallelConfig(), seed=0)
    yield
    shutdown()  # after the outcome is written; skipped after an error, when teardown may hang


def run_child_role(args: argparse.Namespace) -> int:
    """In the child: run the probe or one check, write its outcome to --child-out, return 0 if written
    as pass/fail, 1 after an error."""
    from gpu_check_models import use_device

    start_outcome(args.child_out)
    use_device(args.device)
    try:
        if args.probe:
            from gpu_check_env import probe

            write_outcome("pass", "probed", probe())
            return 0
        check = CHECKS[args.only]
        module, function = check.run.split(":")
        with _process_group(check.process_group):
            passed, summary, metrics = getattr(importlib.import_module(module), function)(args)
            write_outcome("pass" if passed else "fail", summary, metrics)
        return 0
    except Exception:
        write_outcome("error", error=traceback.format_exc())
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.only or args.probe:
        return run_child_role(args)
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    return run_parent(args, argv)


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (a job's time limit) as an exit: the running child is stopped on the way out."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if "--child-out" in sys.argv:  # a child: skip interpreter teardown, which can hang after a CUDA error
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
