"""What `gpu_check.py` records about the machine before its first check, and the bundle it installs in
portable mode.

The host side (`host_environment`, `installed`, `install_bundle_timed`) uses the standard library
only and never imports torch; `probe` runs in a child process (torch, CUDA, the device, package
versions as installed after the bundle).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "build" / "gpu_bundle"
BUNDLE_REQUIREMENTS = REPO / "requirements" / "gpu-bundle.txt"
# Distributions whose versions every report carries; the bundle's requirements are added to them.
PACKAGES = (
    "torch",
    "megatron-core",
    "transformer-engine",
    "transformer-engine-torch",
    "vllm",
    "transformers",
    "tokenizers",
    "safetensors",
    "hydra-core",
    "omegaconf",
    "datasets",
    "nvidia-resiliency-ext",
    "math-verify",
    "tensorboard",
)
# The import name of each optional package the checks depend on.
MODULES = {
    "megatron-core": "megatron.core",
    "transformer-engine": "transformer_engine",
    "vllm": "vllm",
    "transformers": "transformers",
}


def installed(package: str) -> bool:
    """Whether `package` (a key of MODULES) can be found by this interpreter, without importing it."""
    try:
        return importlib.util.find_spec(MODULES[package]) is not None
    except (ImportError, ValueError):  # a parent package that is absent, or half-installed
        return False


def _run(command: list[str], timeout_s: float = 20.0, cwd: Path | None = None) -> str | None:
    """The stripped stdout of `command`, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit and whether the tree differs from it; a copied tree without `.git` says so."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit is None:
        return {"commit": None, "note": f"no git repository at {repo} (a copied working tree)"}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {"commit": commit, "modified": None if status is None else bool(status)}


def host_environment(argv: list[str]) -> dict[str, Any]:
    """Everything known without importing torch: written before anything else can go wrong."""
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": argv,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "git": git_state(),
        "nvidia_smi": smi.splitlines() if smi else None,
    }


def _requirement_names(path: Path) -> list[str]:
    """Distribution names of a requirements file (versions, markers and comments dropped)."""
    if not path.exists():
        return []
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0])
    return names


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys([*PACKAGES, *_requirement_names(BUNDLE_REQUIREMENTS)]):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def probe() -> dict[str, Any]:
    """Child side: torch and the device as this process sees them, and what is installed."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": package_versions(),
        "importable": {package: installed(package) for package in MODULES},
    }
    if info["cuda_available"]:
        properties = torch.cuda.get_device_properties(0)
        info |= {
            "device": torch.cuda.get_device_name(0),
            "device_count": torch.cuda.device_count(),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "device_memory_gib": round(properties.total_memory / 1024**3, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        }
    return info


def _load_bundle_module():
    """`benchmarks/gpu_bundle.py`, loaded by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_bundle", Path(__file__).with_name("gpu_bundle.py"))
    if spec is None or spec.loader is None or not Path(spec.origin or "").exists():
        raise FileNotFoundError(f"{Path(__file__).with_name('gpu_bundle.py')} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_bundle_timed(bundle: Path, target: Path, python: str = sys.executable) -> dict[str, Any]:
    """Install the portable bundle's wheels for `python` into the folder `target`, which the children
    then find first on PYTHONPATH: the machine's Python, its torch included, stays as it was, and no
    write access to its site-packages is needed. Status, seconds and the error if any; an absent
    bundle is recorded, not fatal (the packages may be installed already)."""
    record: dict[str, Any] = {"path": str(bundle), "target": str(target)}
    if not bundle.exists():
        return record | {
            "status": "absent",
            "note": f"no bundle at {bundle}: nothing installed (build it with benchmarks/gpu_bundle.py)",
        }
    start = time.perf_counter()
    try:
        _load_bundle_module().install_bundle(bundle, python, target=target)
        record["status"] = "installed"
    except Exception:  # recorded: the checks then say what they miss
        record |= {"status": "error", "error": traceback.format_exc()}
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record
