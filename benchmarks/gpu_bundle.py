"""Portable mode: carry the pure-Python side of xr-nemo to an offline CUDA machine as a bundle of wheels.

The machine: Linux x86_64 (glibc >= 2.31), CPython 3.12, a CUDA build of torch >= 2.11 already installed,
no network, little that can be brought in. The bundle holds the wheels it lacks to run `xr-nemo sft`
and `xr-nemo grpo rollout.engine=reference` from the source tree: requirements/gpu-bundle.txt, exact
pins. What the machine is assumed to have is STOCK below (torch and what torch itself requires); what is
left out on purpose, and why, is NOT_BUNDLED (modules the package imports) and PRUNED (requirements that
bundled packages declare but that the portable run never imports). tests/test_gpu_bundle.py checks all
three against the source tree and the installed packages' metadata.

Build it here (needs PyPI; about two minutes, most of it compression):

    python benchmarks/gpu_bundle.py [--out build/gpu_bundle]

    build/gpu_bundle/wheels.tar.xz      the cp312 wheels, re-zipped without compression and packed as one
                                        xz archive: about 31 MiB instead of 51 MiB of wheels. Re-zipping
                                        keeps every file byte for byte (RECORD still matches).
    build/gpu_bundle/requirements.txt   a copy of requirements/gpu-bundle.txt
    build/gpu_bundle/manifest.json      wheels, their sizes, the totals, the target interpreter

It fails when the bundle is over LIMIT_MIB. Install it there (offline), from the source tree:

    python3 benchmarks/gpu_bundle.py --install build/gpu_bundle [--python python3] [--target DIR]

The recipes (top-level recipes/, imported as `xr_nemo.recipes`) are importable only once the project is
installed; `python3 -m pip install --no-index --no-deps --no-build-isolation -e .` does that offline in
a second or two wherever setuptools is present (torch requires it).

Contract of `install_bundle(bundle_dir, python, target=None)`, the same step for scripts that import this
module (benchmarks/ is not a package: put it on sys.path or load this file by path):
- `python` is the interpreter to install for; it must be the CPython version the bundle was built for
  (manifest "python", 3.12) and must already have torch >= 2.11, which the bundle never carries.
- Runs `python -m pip install --no-index --no-deps --find-links <unpacked wheels> -r requirements.txt`
  (`--target DIR --upgrade` when `target` is given). --no-deps: pip installs exactly the listed wheels
  and never replaces the machine's torch; --no-index: nothing is fetched.
- Without `target` the wheels go into that interpreter's environment. To leave a system Python as it
  was, pass a venv made with `python3 -m venv --system-site-packages` (it sees the system torch), or a
  `target` folder and put it first on PYTHONPATH.
- Raises BundleError with what went wrong and what to do: wrong interpreter, no torch, pip's error.
- Idempotent: running it again reinstalls the same versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements" / "gpu-bundle.txt"
OUT = ROOT / "build" / "gpu_bundle"
ARCHIVE = "wheels.tar.xz"
MANIFEST = "manifest.json"
BUNDLE_REQUIREMENTS = "requirements.txt"
LIMIT_MIB = 48  # what may be brought to the machine is 64 MiB in all; the source tree needs < 1 MiB

PYTHON = (3, 12)
MIN_TORCH = (2, 11)
# nvidia-resiliency-ext 0.4.1 is the newest-tagged wheel (manylinux_2_31): glibc 2.31 and newer.
GLIBC_MINOR = 31
# Source-only on PyPI and pure Python: built here into a py3-none-any wheel.
SOURCE_ONLY = frozenset({"antlr4-python3-runtime"})

# What `pip install torch` puts on any CUDA machine (torch 2.11's Requires-Dist for Linux, and theirs);
# the bundle does not carry these. numpy is not among them: torch does not require it.
STOCK = frozenset(
    {
        "torch",
        "triton",
        "filelock",
        "typing-extensions",
        "setuptools",
        "sympy",
        "mpmath",
        "networkx",
        "jinja2",
        "markupsafe",
        "fsspec",
        "pip",
        "cuda-bindings",
        "cuda-pathfinder",
        "cuda-toolkit",
    }
)

# Top-level modules that xr_nemo/ or recipes/ import and the bundle leaves out; the portable run must not
# import them (tests/test_gpu_bundle.py checks). Transformer Engine is not imported by name: the layer
# code probes for it and uses the local (torch) spec where it is absent.
NOT_BUNDLED = {
    "vllm": "rollouts and evaluation through vLLM; portable runs use rollout.engine=reference",
    "datasets": "hub dataset names only (xr_nemo/data/records.py); the machine has no network",
    "pyarrow": ".parquet data files only; its wheel alone is 52 MiB: give portable runs JSON lines",
    "matplotlib": "charts in `xr-nemo eval` and `xr-nemo demo` reports only",
}

# Requirements that bundled packages declare but that sft/grpo never import (checked by importing the
# run's modules with them blocked, and by an sft + grpo run with only bundled and stock packages).
PRUNED = {
    "typer": "transformers' `transformers` command line",
    "click": "huggingface_hub's `hf` command line",
    "hf-xet": "huggingface_hub's Xet downloads from the hub; the machine has no network",
    "grpcio": "the TensorBoard server; writing event files needs none of it",
    "tensorboard-data-server": "the TensorBoard server",
    "werkzeug": "the TensorBoard server",
    "markdown": "the TensorBoard server",
}


class BundleError(RuntimeError):
    """A bundle that cannot be built or installed; the message says why and what to do."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path = REQUIREMENTS) -> dict[str, str]:
    """`name==version` lines → {canonical name: version}; anything looser is refused (the bundle is exact)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!-]+)", line)
        if not match:
            raise BundleError(f"{path}:{number}: {line!r} is not an exact `name==version` pin")
        pins[canonical(match[1])] = match[2]
    return pins


def platforms(glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """pip matches `--platform` tags exactly: list every manylinux tag the machine accepts, newest first."""
    return [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 16, -1)] + ["manylinux2014_x86_64"]


def wheel_fits(filename: str) -> bool:
    """Whether a wheel installs on CPython 3.12, Linux x86_64, glibc >= 2.31."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    plats = platforms()
    accepted = set(cpython_tags(PYTHON, platforms=plats)) | set(
        compatible_tags(PYTHON, f"cp{PYTHON[0]}{PYTHON[1]}", plats)
    )
    return bool(parse_wheel_filename(filename)[3] & accepted)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise BundleError(f"`{' '.join(command)}` failed:\n{(result.stdout + result.stderr)[-3000:]}")


def download(pins: dict[str, str], dest: Path) -> list[Path]:
    """One wheel per pin in `dest`: cp312 manylinux wheels from the index, pure-Python ones built here."""
    python = f"{PYTHON[0]}.{PYTHON[1]}"
    binary = [f"{name}=={version}" for name, version in pins.items() if name not in SOURCE_ONLY]
    plats = [arg for plat in platforms() for arg in ("--platform", plat)]
    _pip("download", "--only-binary=:all:", "--no-deps", *plats, "--python-version", python,
         "--implementation", "cp", "-d", str(dest), *binary)  # fmt: skip
    for name in SOURCE_ONLY & pins.keys():
        _pip("wheel", "--no-deps", f"--no-binary={name}", "-w", str(dest), f"{name}=={pins[name]}")
    from packaging.utils import parse_wheel_filename

    wheels = {canonical(str(parse_wheel_filename(w.name)[0])): w for w in sorted(dest.glob("*.whl"))}
    for name, version in pins.items():
        wheel = wheels.get(name)
        if wheel is None:
            raise BundleError(f"no wheel for {name}=={version} in {dest}")
        if str(parse_wheel_filename(wheel.name)[1]) != version:
            raise BundleError(f"{wheel.name} is not {name}=={version}")
        if not wheel_fits(wheel.name):
            raise BundleError(
                f"{wheel.name} does not install on CPython {python} / glibc 2.{GLIBC_MINOR} x86_64"
            )
    if extra := sorted(set(wheels) - pins.keys()):
        raise BundleError(f"wheels nobody asked for in {dest}: {extra}")
    return [wheels[name] for name in sorted(pins)]


def pack(wheels: list[Path], archive: Path) -> None:
    """Re-zip each wheel without compression (same files, same RECORD), then xz the lot as one archive:
    compressing all wheels together finds the redundancy that per-file deflate cannot."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive, "w:xz", preset=6) as tar:
        for wheel in wheels:
            stored = Path(tmp) / wheel.name
            with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
                for info in src.infolist():
                    dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
            tar.add(stored, arcname=wheel.name)
            stored.unlink()


def build(out: Path = OUT, requirements: Path = REQUIREMENTS) -> dict:
    """Download, check, pack and describe the bundle in `out`; returns the manifest."""
    pins = read_requirements(requirements)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xr-nemo-bundle-") as tmp:
        wheels = download(pins, Path(tmp))
        partial = out / (ARCHIVE + ".tmp")
        pack(wheels, partial)
        partial.replace(out / ARCHIVE)
        entries = [
            {"file": w.name, "bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
            for w in wheels
        ]
    shutil.copyfile(requirements, out / BUNDLE_REQUIREMENTS)
    manifest = {
        "python": f"{PYTHON[0]}.{PYTHON[1]}",
        "platforms": platforms(),
        "min_torch": ".".join(map(str, MIN_TORCH)),
        "archive": ARCHIVE,
        "archive_bytes": (out / ARCHIVE).stat().st_size,
        "wheels_bytes": sum(e["bytes"] for e in entries),
        "wheels": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["bundle_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return manifest


def _interpreter(python: str) -> tuple[tuple[int, int], str | None]:
    """(major, minor) of `python` and its torch version (None without torch), without importing torch."""
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "try:\n    torch = m.version('torch')\nexcept m.PackageNotFoundError:\n    torch = None\n"
        "print(json.dumps([sys.version_info[:2], torch]))"
    )
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BundleError(f"cannot run {python!r}: {exc}") from exc
    version, torch = json.loads(result.stdout)
    return (version[0], version[1]), torch


def install_bundle(bundle_dir: Path, python: str, target: Path | None = None) -> None:
    """Install the bundle's wheels for `python`, offline and without dependencies (contract: module doc)."""
    bundle_dir = Path(bundle_dir)
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{bundle_dir} is not a bundle ({exc}): build it with benchmarks/gpu_bundle.py"
        ) from exc
    version, torch = _interpreter(python)
    if f"{version[0]}.{version[1]}" != manifest["python"]:
        raise BundleError(
            f"the bundle holds wheels for CPython {manifest['python']}; {python} is "
            f"{version[0]}.{version[1]}: pass that interpreter, or build a bundle for this one"
        )
    minimum = tuple(int(part) for part in manifest["min_torch"].split("."))
    found = tuple(int(part) for part in re.findall(r"\d+", torch or "")[:2])
    if torch is None or found < minimum:
        raise BundleError(
            f"{python} has {'no torch' if torch is None else f'torch {torch}'}: portable mode runs on the "
            f"machine's own CUDA torch >= {manifest['min_torch']}, which the bundle does not carry"
        )
    with tempfile.TemporaryDirectory(prefix="xr-nemo-wheels-") as wheels:
        with tarfile.open(bundle_dir / manifest["archive"], "r:xz") as tar:
            tar.extractall(wheels, filter="data")
        command = [
            python, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--no-deps",
            "--find-links", wheels, "-r", str(bundle_dir / BUNDLE_REQUIREMENTS),
        ]  # fmt: skip
        if target is not None:
            command += ["--target", str(target), "--upgrade"]
        result = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"}
        )
    if result.returncode:
        raise BundleError(f"installing the bundle failed:\n{(result.stdout + result.stderr)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=OUT, help="where to build the bundle (default: %(default)s)"
    )
    parser.add_argument(
        "--install", type=Path, metavar="BUNDLE", help="install BUNDLE instead of building one"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter to install for (with --install)"
    )
    parser.add_argument(
        "--target", type=Path, help="install into this folder (with --install; then PYTHONPATH)"
    )
    args = parser.parse_args(argv)
    try:
        if args.install:
            install_bundle(args.install, args.python, args.target)
            print(f"[gpu_bundle] installed {args.install} for {args.python}")
            return 0
        manifest = build(args.out)
    except BundleError as exc:
        print(f"[gpu_bundle] error: {exc}", file=sys.stderr)
        return 1
    mib = 1 << 20
    for entry in sorted(manifest["wheels"], key=lambda e: -e["bytes"]):
        print(f"{entry['bytes'] / mib:7.2f} MiB  {entry['file']}")
    print(
        f"[gpu_bundle] {len(manifest['wheels'])} wheels, {manifest['wheels_bytes'] / mib:.1f} MiB as wheels; "
        f"bundle {args.out}: {manifest['bundle_bytes'] / mib:.1f} MiB (limit {LIMIT_MIB} MiB)"
    )
    if manifest["bundle_bytes"] > LIMIT_MIB * mib:
        print(f"[gpu_bundle] error: the bundle is over {LIMIT_MIB} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
