"""Model families as bundles: a checkpoint's family is found by its config.json, an unknown architecture
is refused with the supported ones listed, every family's offline factories produce what the registry
recognises, and nothing outside xr_nemo/models names a family (import-linter's contract covers our own
modules; this covers Transformers' and vLLM's classes and any other spelling)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from xr_nemo.cli import main
from xr_nemo.errors import ConfigError
from xr_nemo.models.registry import FAMILIES, family_for_dir, family_named, family_of

ROOT = Path(__file__).resolve().parent.parent
FAMILY_NAME = re.compile(r"qwen2_?5_?vl|qwen2_?vl|qwen3_?vl", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _family_names(source: str) -> list[tuple[int, str]]:
    """(line, text) of every import, identifier and string (docstrings and comments aside) naming a
    model family."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            texts = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            texts += [a.asname or "" for a in node.names]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts = [node.name]
        elif isinstance(node, ast.arg | ast.keyword):
            texts = [node.arg or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts = [node.value]
        else:
            continue
        found += [(node.lineno, text) for text in texts if FAMILY_NAME.search(text)]
    return found


def test_the_scan_sees_imports_names_and_strings_but_not_docstrings():
    source = (
        '"""Qwen2_5_VL in a docstring is fine."""\n'
        "from transformers import Qwen2_5_VLForConditionalGeneration\n"
        "import transformers.models.qwen2_vl.image_processing_pil_qwen2_vl as processing\n"
        "model = transformers.Qwen2_5_VLModel  # Qwen2_5_VL in a comment is fine\n"
        "path = 'xr_nemo.models.qwen25_vl.tiny'\n"
        "from transformers import Qwen3VLForConditionalGeneration\n"
    )
    assert sorted({line for line, _ in _family_names(source)}) == [2, 3, 4, 5, 6]


def test_nothing_outside_models_names_a_family():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in sorted((ROOT / "xr_nemo").rglob("*.py"))
        if "models" not in path.relative_to(ROOT / "xr_nemo").parts
        for line, text in _family_names(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "reach a family through xr_nemo.models.registry:\n" + "\n".join(offenders)


def test_an_unknown_architecture_is_refused_listing_the_supported_ones(tmp_path):
    llama = SimpleNamespace(model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ConfigError, match=r"unsupported architecture \['LlamaForCausalLM'\]") as refused:
        family_of(llama, where="somewhere/config.json")
    assert refused.value.where == "somewhere/config.json"
    assert all(arch in refused.value.fix for family in FAMILIES for arch in family.architectures)

    (tmp_path / "config.json").write_text(json.dumps(vars(llama)))
    with pytest.raises(ConfigError, match="unsupported architecture") as refused:
        family_for_dir(tmp_path)
    assert refused.value.where == str(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="cannot read the model config"):
        family_for_dir(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown model family 'nope'") as refused:
        family_named("nope")
    assert all(family.name in refused.value.fix for family in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_a_config_listing_no_architectures_is_taken_by_its_model_type(family):
    assert family_of(SimpleNamespace(model_type=family.model_type, architectures=None)) is family
    other = SimpleNamespace(model_type=family.model_type, architectures=["SomethingElseForCausalLM"])
    with pytest.raises(ConfigError, match="unsupported architecture"):
        family_of(other)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_each_family_recognises_its_tiny_and_published_checkpoints(tmp_path, family, capsys):
    assert main(["tiny-model", str(tmp_path / "tiny"), "--family", family.name]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")
    assert family_for_dir(tmp_path / "tiny") is family
    assert family.published and all(family_of(config()) is family for config in family.published.values())
    assert main(["plan", "--family", family.name, "--nodes", "1"]) == 0  # its first published model
    assert capsys.readouterr().out.count("\n| 8 |") == 1


def test_plan_refuses_a_model_of_no_supported_family(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    assert main(["plan", "--model", str(tmp_path), "--nodes", "1"]) == 2
    assert "unsupported architecture ['LlamaForCausalLM']" in capsys.readouterr().err


def test_the_qwen3_vl_recipe_is_x_reasoners_with_only_the_model_and_runs_changed():
    from dataclasses import asdict

    from xr_nemo.recipes import xreasoner_7b, xreasoner_qwen3vl_8b

    changed = {"run", "model"}
    for stage in ("sft", "grpo"):
        ours, paper = asdict(getattr(xreasoner_qwen3vl_8b, stage)()), asdict(getattr(xreasoner_7b, stage)())
        assert {key: value for key, value in ours.items() if key not in changed} == {
            key: value for key, value in paper.items() if key not in changed
        }
    assert xreasoner_qwen3vl_8b.sft().model.hf_dir == "Qwen3-VL-8B-Instruct"
    assert xreasoner_qwen3vl_8b.grpo().model.checkpoint == xreasoner_qwen3vl_8b.sft().run.dir
