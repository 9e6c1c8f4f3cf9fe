"""pyproject lists every package under xr_nemo/ and installs no top-level `recipes` or `conversion`."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_and_nothing_installs_at_the_top_level():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "xr_nemo").rglob("__init__.py")
    }
    listed = set(setuptools["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {name.split(".")[0] for name in listed} == {"xr_nemo"}
    assert setuptools["package-dir"] == {"xr_nemo.recipes": "recipes"}


def test_recipes_import_under_xr_nemo():
    from xr_nemo.recipes import tiny_cpu

    assert Path(tiny_cpu.__file__).resolve().parent == REPO / "recipes"
