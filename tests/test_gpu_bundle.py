"""The portable bundle (benchmarks/gpu_bundle.py, requirements/gpu-bundle.txt) carries what the package
needs: every import of xr_nemo/ and recipes/ is bundled, on the stock machine, or left out on purpose;
every bundled package's requirements are bundled too; and the sft/grpo path runs with nothing else."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
gpu_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bundle)

PINS = gpu_bundle.read_requirements()
# Markers as the portable machine evaluates them (CPython 3.12, Linux x86_64), no extras requested.
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
# The modules the portable sft/grpo run goes through (the CLI imports the stage modules lazily).
PORTABLE_MODULES = [
    "xr_nemo.cli",
    "xr_nemo.sft.run",
    "xr_nemo.grpo.run",
    "xr_nemo.generation.reference",
    "xr_nemo.generation.hf_engine",
    "xr_nemo.rewards.math",
    "xr_nemo.training.metrics",
    "xr_nemo.training.fault_tolerance",
    "xr_nemo.models.qwen25_vl.tiny",
    "xr_nemo.recipes.tiny_cpu",
]


def _imports() -> dict[str, set[str]]:
    """Top-level module → the files importing it: module- and function-level, absolute imports only."""
    found: dict[str, set[str]] = {}
    for folder in ("xr_nemo", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _third_party(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: f for m, f in imports.items() if m not in sys.stdlib_module_names and m != "xr_nemo"}


def test_the_import_walk_sees_function_level_imports():
    """Guards the walk itself: datasets is imported only inside a function (records._hub)."""
    imports = _imports()
    assert "xr_nemo/data/records.py" in imports["datasets"]
    assert {"torch", "megatron", "transformers"} <= imports.keys()


def test_bundle_covers_every_import_of_the_package():
    distributions = metadata.packages_distributions()
    carried = PINS.keys() | gpu_bundle.STOCK
    problems = []
    for module, files in sorted(_third_party(_imports()).items()):
        if module in gpu_bundle.NOT_BUNDLED:
            continue
        names = {gpu_bundle.canonical(d) for d in distributions.get(module, [])}
        if not names:
            problems.append(
                f"{module} (imported by {sorted(files)}) is not installed here: cannot tell its distribution"
            )
        elif not names & carried:
            problems.append(
                f"{module} (distribution {sorted(names)}, imported by {sorted(files)}) is neither in "
                "requirements/gpu-bundle.txt nor in gpu_bundle.STOCK: bundle it, or add it to "
                "NOT_BUNDLED with a reason"
            )
    assert not problems, "\n".join(problems)


def test_every_exclusion_is_still_imported_somewhere():
    stale = sorted(gpu_bundle.NOT_BUNDLED.keys() - _imports().keys())
    assert not stale, f"NOT_BUNDLED names modules the package no longer imports: {stale}"


def test_bundle_carries_what_its_packages_require():
    """--no-deps installs only the list: each bundled package's requirements (for CPython 3.12 on Linux)
    must be bundled at a version they accept, be on the stock machine, or be PRUNED with a reason."""
    problems, used_pruned = [], set()
    for name in sorted(PINS):
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(TARGET_ENV):
                continue
            dep = gpu_bundle.canonical(requirement.name)
            if dep in gpu_bundle.STOCK:
                continue
            if dep in gpu_bundle.PRUNED:
                used_pruned.add(dep)
            elif dep not in PINS:
                problems.append(f"{name} requires {line!r}: add {dep} to requirements/gpu-bundle.txt")
            elif not requirement.specifier.contains(PINS[dep], prereleases=True):
                problems.append(f"{name} requires {line!r}, the bundle pins {dep}=={PINS[dep]}")
    assert not problems, "\n".join(problems)
    stale = sorted(gpu_bundle.PRUNED.keys() - used_pruned)
    assert not stale, f"PRUNED names requirements no bundled package declares: {stale}"


def test_bundle_pins_are_the_versions_the_tests_run():
    """requirements/constraints.txt includes the bundle's pins, so `make setup` installs exactly these."""
    differ = {name: (version, metadata.version(name)) for name, version in PINS.items()}
    differ = {name: pair for name, pair in differ.items() if pair[0] != pair[1]}
    assert not differ, f"bundle pin vs installed here (run `make setup`): {differ}"
    assert "-c gpu-bundle.txt" in (ROOT / "requirements" / "constraints.txt").read_text()


def test_read_requirements_refuses_loose_pins(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("# comment\nnumpy==2.3.5  # why\n\nPyYAML==6.0.4\n")
    assert gpu_bundle.read_requirements(path) == {"numpy": "2.3.5", "pyyaml": "6.0.4"}
    path.write_text("numpy>=2\n")
    with pytest.raises(gpu_bundle.BundleError, match=r"r\.txt:1: 'numpy>=2' is not an exact"):
        gpu_bundle.read_requirements(path)


@pytest.mark.parametrize(
    ("filename", "fits"),
    [
        ("numpy-2.3.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
        ("tokenizers-0.23.3-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("nvidia_resiliency_ext-0.4.1-cp312-cp312-manylinux_2_31_x86_64.whl", True),
        ("tqdm-4.70.1-py3-none-any.whl", True),
        ("numpy-2.3.5-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", False),
        ("nvidia_resiliency_ext-0.5.0-cp312-cp312-manylinux_2_39_x86_64.whl", False),
        ("numpy-2.3.5-cp312-cp312-manylinux_2_27_aarch64.whl", False),
        ("numpy-2.3.5-cp312-cp312-macosx_14_0_arm64.whl", False),
    ],
)
def test_wheel_fits_the_portable_machine(filename, fits):
    assert gpu_bundle.wheel_fits(filename) is fits


def _stock_and_bundle_env(where: Path) -> Path:
    """A venv that sees only what the portable machine would have: the stock and bundled distributions
    installed here (and the editable xr-nemo), linked into its site-packages. Returns its python."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    for name in sorted(gpu_bundle.STOCK | PINS.keys()):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # stock CUDA-only parts (triton, cuda-*) that the CPU torch does not have
        origin = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if not (site / top).exists() and (origin / top).exists():
                (site / top).symlink_to(origin / top)
    # `make setup`'s editable install: its .pth hook maps xr_nemo.recipes to the top-level recipes/.
    editable = list(Path(sysconfig.get_paths()["purelib"]).glob("__editable__*xr_nemo*"))
    assert editable, "xr-nemo is not installed in editable mode here: run `make setup`"
    for path in editable:
        (site / path.name).symlink_to(path)
    return python


@pytest.fixture(scope="module")
def portable_python(tmp_path_factory):
    return _stock_and_bundle_env(tmp_path_factory.mktemp("portable") / "venv")


def test_portable_modules_import_with_only_stock_and_bundled_packages(portable_python):
    """What the static checks cannot see: a module on the sft/grpo path that imports, when imported, a
    package neither bundled nor stock (an excluded one, or one a bundled package imports undeclared)."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {PORTABLE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {sorted(gpu_bundle.NOT_BUNDLED)!r} if m in sys.modules)))\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([portable_python, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []


@pytest.mark.slow
def test_sft_and_grpo_run_with_only_stock_and_bundled_packages(portable_python, tmp_path):
    """The portable run itself, on the CPU: one SFT step, then one GRPO step with the reference engine."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sft = [portable_python, "-m", "xr_nemo.cli", "sft", "--recipe", "tiny_cpu", "trainer.max_steps=1"]
    result = subprocess.run(
        [*sft, f"run.dir={tmp_path / 'sft'}"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    grpo = [portable_python, "-m", "xr_nemo.cli", "grpo", "--recipe", "tiny_cpu", "rollout.engine=reference"]
    grpo += ["trainer.max_steps=1", f"model.checkpoint={tmp_path / 'sft'}", f"run.dir={tmp_path / 'grpo'}"]
    result = subprocess.run(grpo, capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "grpo" / "checkpoints" / "step_1").is_dir()


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module that prints its version."""
    dist_info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        whl.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        whl.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(f"{dist_info}/RECORD", "")
    return path


def _bundle(tmp_path: Path, python: str) -> Path:
    """A bundle laid out as `build` lays it out, holding one tiny wheel, for interpreter `python`."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    gpu_bundle.pack([_wheel(wheels, "xrprobe", "1.2")], bundle / gpu_bundle.ARCHIVE)
    (bundle / gpu_bundle.BUNDLE_REQUIREMENTS).write_text("xrprobe==1.2\n")
    manifest = {"python": python, "min_torch": "2.11", "archive": gpu_bundle.ARCHIVE}
    (bundle / gpu_bundle.MANIFEST).write_text(json.dumps(manifest))
    return bundle


def test_install_bundle_installs_offline_into_a_target(tmp_path):
    """The packed (re-zipped, xz) wheel installs with --no-index --no-deps and imports."""
    bundle = _bundle(tmp_path, f"{sys.version_info[0]}.{sys.version_info[1]}")
    gpu_bundle.install_bundle(bundle, sys.executable, target=tmp_path / "site")
    out = subprocess.check_output(
        [sys.executable, "-c", "import xrprobe; print(xrprobe.VERSION)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        text=True,
    )
    assert out.strip() == "1.2"


def test_install_bundle_refuses_another_python(tmp_path):
    bundle = _bundle(tmp_path, "3.99")
    with pytest.raises(gpu_bundle.BundleError, match=r"wheels for CPython 3\.99; .* is 3\.\d+"):
        gpu_bundle.install_bundle(bundle, sys.executable, target=tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_install_bundle_refuses_a_python_without_torch(tmp_path):
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    bundle = _bundle(tmp_path, f"{sys.version_info[0]}.{sys.version_info[1]}")
    with pytest.raises(
        gpu_bundle.BundleError, match="has no torch: portable mode runs on the machine's own CUDA"
    ):
        gpu_bundle.install_bundle(bundle, str(bare / "bin" / "python"))
