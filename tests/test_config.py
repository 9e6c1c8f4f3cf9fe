"""The typed config a user learns: choices refused with the allowed values, bounds checked with the full
key, old spellings still read, every recipe stage valid, a saved config re-read as it was, and a run
directory that keeps the first launch's config."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import xr_nemo.recipes
from xr_nemo.cli import load_recipe
from xr_nemo.config.overrides import apply_overrides, config_yaml, load_config
from xr_nemo.config.schema import (
    DistillConfig,
    EngineKind,
    EvalConfig,
    GRPOConfig,
    OnError,
    Overlong,
    SFTConfig,
)
from xr_nemo.errors import ConfigError
from xr_nemo.run_dir import record_config

REQUIRED = ["model.hf_dir=/m", "data.train=/d"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.overlong=dorp", r"expected one of \[truncate, drop\]"),
        ("data.on_error=rise", r"expected one of \[raise, skip\]"),
        ("data.schema=mesages", r"openthoughts, messages, prompt_response"),
        ("scheduler.name=cosin", r"constant, cosine, epoch_decay"),
        ("trainer.max_steps=-1", r"trainer\.max_steps=-1 is out of range"),
        ("trainer.max_steps=0", r"trainer\.max_steps=0 is out of range"),
        ("checkpoint.keep_last=0", r"checkpoint\.keep_last=0 is out of range"),
        ("optim.lr=-1e-5", r"optim\.lr=-1e-05 is out of range"),
        ("trainer.global_batch_size=0", r"trainer\.global_batch_size=0 is out of range"),
        ("trainer.global_batch_samples=0", r"trainer\.global_batch_samples=0 is out of range"),
        ("optim.beta2=1.0", r"optim\.beta2=1\.0 is out of range: it must lie in \[0, 1\)"),
    ],
)
def test_bad_values_are_refused_with_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(SFTConfig(), [*REQUIRED, override])


@pytest.mark.parametrize(
    ("sizes", "state"),
    [(["trainer.global_batch_samples=128"], "set"), (["trainer.global_batch_size=null"], "null")],
)
def test_exactly_one_of_the_global_batch_sizes_is_set(tmp_path, sizes, state):
    from xr_nemo.sft.run import check_config

    with pytest.raises(ConfigError, match=f"are both {state}; exactly one sizes an optimizer step") as error:
        apply_overrides(SFTConfig(), [*REQUIRED, f"run.dir={tmp_path}", *sizes])
    assert "trainer.global_batch_size=null" in error.value.fix
    samples = [  # no multiple of the micro-batch needed: a step is made up with empty sequences
        "trainer.global_batch_size=null",
        "trainer.global_batch_samples=3",
        "trainer.micro_batch_size=2",
    ]
    check_config(apply_overrides(SFTConfig(), [*REQUIRED, f"run.dir={tmp_path}", *samples]))


def test_choices_are_enums_that_read_as_their_names():
    config = apply_overrides(SFTConfig(), [*REQUIRED, "data.overlong=drop", "data.on_error=raise"])
    assert config.data.overlong is Overlong.drop and config.data.overlong == "drop"
    assert config.data.on_error is OnError["raise"]
    assert "overlong: drop" in config_yaml(config) and "on_error: raise" in config_yaml(config)


def test_grpo_bounds_and_rollout_engine():
    with pytest.raises(ConfigError, match=r"rollout\.n=1 is out of range"):
        apply_overrides(GRPOConfig(), ["data.train=/d", "rollout.n=1"])
    config = apply_overrides(GRPOConfig(), ["data.train=/d", "rollout.engine=reference"])
    assert config.rollout.engine is EngineKind.reference


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("parallel.tp=4", ("parallel", "tensor_parallel", 4)),
        ("model.tensor_parallel=4", ("parallel", "tensor_parallel", 4)),
        ("model.pipeline_parallel=2", ("parallel", "pipeline_parallel", 2)),
        ("parallel.cp=2", ("parallel", "context_parallel", 2)),
        ("model.use_distributed_optimizer=false", ("parallel", "use_distributed_optimizer", False)),
        ("init.checkpoint=/c", ("model", "checkpoint", "/c")),
    ],
)
def test_old_spellings_of_training_keys_keep_working(old, new):
    config = apply_overrides(SFTConfig(), [*REQUIRED, old])
    section, key, value = new
    assert getattr(getattr(config, section), key) == value


def test_eval_and_distill_share_the_generation_section_and_read_the_flat_keys():
    evaluation = apply_overrides(
        EvalConfig(model="m"), ["temperature=0.3", "max_new_tokens=64", "generation.seed=5", "samples=5"]
    )
    generation = evaluation.generation
    assert (generation.temperature, generation.max_new_tokens, generation.seed) == (0.3, 64, 5)
    distill = apply_overrides(DistillConfig(teacher="t", data="d", out="o"), ["kv_cache_gib=0.25"])
    assert distill.generation.kv_cache_gib == 0.25
    with pytest.raises(ConfigError, match=r"generation\.top_p=0\.0 is out of range"):
        apply_overrides(EvalConfig(model="m"), ["generation.top_p=0"])


def _recipe_stages() -> list[tuple[str, str]]:
    names = [module.name for module in pkgutil.iter_modules(xr_nemo.recipes.__path__)]
    return [
        (name, stage)
        for name in names
        for stage in ("sft", "grpo", "eval", "distill")
        if hasattr(importlib.import_module(f"xr_nemo.recipes.{name}"), stage)
    ]


@pytest.mark.parametrize(("recipe", "stage"), _recipe_stages())
def test_every_recipe_stage_is_a_valid_config(recipe, stage):
    given_on_the_command_line = ["teacher=/models/teacher"] if stage == "distill" else []
    config = apply_overrides(load_recipe(recipe, stage), given_on_the_command_line)
    assert config_yaml(config)


def test_a_saved_config_reads_back_as_the_same_config(tmp_path):
    config = apply_overrides(load_recipe("xreasoner_7b", "grpo"), ["rollout.n=4", "data.on_error=skip"])
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    assert load_config(tmp_path / "config.yaml", GRPOConfig) == config
    with pytest.raises(ConfigError, match="not a config of this command"):
        load_config(tmp_path / "config.yaml", SFTConfig)


def test_a_relaunch_keeps_the_first_config_and_records_what_changed(tmp_path):
    said = []
    first = apply_overrides(SFTConfig(), [*REQUIRED, "trainer.max_steps=3"])
    assert record_config(first, tmp_path, said.append) == tmp_path / "config.yaml"
    assert record_config(first, tmp_path, said.append) == tmp_path / "config.yaml"  # same settings
    second = apply_overrides(SFTConfig(), [*REQUIRED, "trainer.max_steps=5", "optim.lr=0"])
    assert record_config(second, tmp_path, said.append) == tmp_path / "config.1.yaml"
    assert load_config(tmp_path / "config.yaml", SFTConfig) == first
    assert load_config(tmp_path / "config.1.yaml", SFTConfig) == second
    assert len(said) == 1 and "trainer.max_steps: 3 → 5" in said[0] and "optim.lr: 1e-05 → 0.0" in said[0]
    third = apply_overrides(SFTConfig(), [*REQUIRED, "trainer.max_steps=6"])
    assert record_config(third, tmp_path, said.append) == tmp_path / "config.2.yaml"
    assert "trainer.max_steps: 5 → 6" in said[1]


def test_every_key_the_docs_and_recipes_set_exists():
    """Every `key=value` the guides, READMEs and recipe docstrings show names a real config key (or one
    of its accepted old spellings), so the docs cannot drift from the config."""
    import re
    from pathlib import Path

    from omegaconf import OmegaConf

    from xr_nemo.config.overrides import ALIASES

    repo = Path(__file__).resolve().parents[1]
    configs = [
        SFTConfig(),
        GRPOConfig(),
        EvalConfig(model="m"),
        DistillConfig(teacher="t", data="d", out="o"),
    ]
    nodes = [OmegaConf.structured(config) for config in configs]

    def exists(key: str) -> bool:
        parent, _, leaf = ALIASES.get(key, key).rpartition(".")
        for node in nodes:
            section = OmegaConf.select(node, parent) if parent else node
            if section is not None and (leaf in section.keys() or OmegaConf.get_type(section) is dict):  # noqa: SIM118 (missing values)
                return True
        return False

    files = [
        *repo.glob("docs/*.md"),
        repo / "README.md",
        repo / "slurm/README.md",
        *repo.glob("recipes/*.py"),
    ]
    named = {
        (file.name, match.group(1))
        for file in files
        for match in re.finditer(r"(?<![\w./-])\+?([a-z_]+(?:\.[a-z_0-9]+)+)=", file.read_text())
    }
    assert len(named) > 40  # the pattern finds them
    assert [entry for entry in sorted(named) if not exists(entry[1])] == []


def test_frozen_patterns_stop_training_what_they_match_and_a_pattern_matching_nothing_is_refused():
    import torch

    from xr_nemo.training.setup import freeze

    model = torch.nn.ModuleDict({"embedding": torch.nn.Linear(2, 2), "layer": torch.nn.Linear(2, 2)})
    freeze(model, ["embedding.*"])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "embedding.weight": False,
        "embedding.bias": False,
        "layer.weight": True,
        "layer.bias": True,
    }
    with pytest.raises(ConfigError, match=r"'embeddings\.\*' matches no parameter"):
        freeze(model, ["embeddings.*"])


@pytest.mark.parametrize(
    ("override", "fixes"),
    [
        ("+trainer.max_steps=5", ["'trainer.max_steps=5'", "'++trainer.max_steps=5'"]),
        ("+model.checkpoint=/c", ["'model.checkpoint=/c'", "'++model.checkpoint=/c'"]),  # null now
        ("+parallel.tp=2", ["'parallel.tp=2'", "'++parallel.tp=2'"]),  # under an old spelling too
    ],
)
def test_a_plus_on_a_key_that_exists_is_refused_with_both_ways_to_write_it(override, fixes):
    with pytest.raises(ConfigError, match=r"adds a key, and .* is already in the config") as error:
        apply_overrides(SFTConfig(), [*REQUIRED, override])
    assert error.value.where == f"override {override!r}"
    assert all(fix in error.value.fix for fix in fixes), error.value.fix
    changed = apply_overrides(SFTConfig(), [*REQUIRED, "+" + override])
    assert apply_overrides(SFTConfig(), [*REQUIRED, override[1:]]) == changed


def test_a_free_form_map_takes_new_entries_with_a_plus_only():
    evaluation = EvalConfig(model="m", benchmarks=["medqa", "gsm8k"])
    added = apply_overrides(evaluation, ["+data.medqa=a.jsonl", "++data.gsm8k=b.jsonl"])
    assert added.data == {"medqa": "a.jsonl", "gsm8k": "b.jsonl"}
    assert apply_overrides(added, ["data.medqa=c.jsonl", "++data.gsm8k=d.jsonl"]).data == {
        "medqa": "c.jsonl",
        "gsm8k": "d.jsonl",
    }
    with pytest.raises(ConfigError, match=r"data\.medqa is not in the config") as error:
        apply_overrides(evaluation, ["data.medqa=a.jsonl"])
    assert error.value.fix == "write '+data.medqa=a.jsonl' to add it"
    with pytest.raises(ConfigError, match=r"\+data\.medqa adds a key"):
        apply_overrides(added, ["+data.medqa=c.jsonl"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_step'"):
        apply_overrides(SFTConfig(), [*REQUIRED, "++trainer.max_step=5"])  # sections stay closed


GRPO_REQUIRED = ["data.train=/d"]


@pytest.mark.parametrize(
    ("kind", "overrides", "where", "message"),
    [
        (SFTConfig, ["parallel.tp=0"], "parallel.tensor_parallel", "must be a positive integer"),
        (SFTConfig, ["parallel.sp=true"], "parallel.sequence_parallel", "needs tensor_parallel > 1"),
        (SFTConfig, ["data.max_length=4098"], "data.max_length", "does not fit trainer.seq_length 4096"),
        (GRPOConfig, ["rollout.engine=hf"], "rollout.engine", "cannot generate rollouts"),
        (GRPOConfig, ["rollout.tensor_parallel=2"], "rollout.tensor_parallel", "not configurable"),
        (GRPOConfig, ["rollout.seed=3"], "rollout.seed", r"rollout\.seed=3 is not used"),
        (GRPOConfig, ["grpo.clip_high=0.1"], "grpo.clip_high", "is below grpo.clip_low=0.2"),
        (
            GRPOConfig,
            ["rollout.engine=reference", "model.fp8=hybrid"],
            "model.fp8 / rollout.engine",
            "reference engine generates with the training model",
        ),
        (
            GRPOConfig,
            ["rollout.engine=reference", "parallel.cp=2"],
            "parallel.context_parallel / rollout.engine",
            "context parallelism needs rollout.engine=vllm",
        ),
        (EvalConfig, ["benchmarks=[gsm8k]", "+data.medqa=m.jsonl"], "data", "benchmarks not evaluated"),
    ],
)
def test_rules_between_keys_are_checked_when_the_config_is_made(kind, overrides, where, message):
    """No process group, no run directory: `apply_overrides` alone refuses them, naming the key."""
    base = {SFTConfig: REQUIRED, GRPOConfig: GRPO_REQUIRED, EvalConfig: ["model=m"]}[kind]
    with pytest.raises(ConfigError, match=message) as error:
        apply_overrides(kind(), [*base, *overrides])
    assert error.value.where == where and error.value.fix


def test_a_saved_config_is_checked_as_overrides_are(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(apply_overrides(GRPOConfig(), GRPO_REQUIRED)).replace("seed: 0", "seed: 3"))
    with pytest.raises(ConfigError, match=r"rollout\.seed=3 is not used"):
        load_config(saved, GRPOConfig)


@pytest.mark.parametrize(
    ("layout", "multiple"),
    [
        ([], None),  # TP=1, PP=1, no FP8: any length
        (["model.fp8=hybrid"], None),  # no pipeline: micro-batches are padded to 16 as they come
        (["parallel.pp=2"], None),  # a fixed length, but nothing to divide it
        (["parallel.pp=2", "model.fp8=hybrid"], 16),
        (["parallel.pp=2", "model.fp8=hybrid", "model.fp8_recipe=mxfp8"], 32),
        (["parallel.pp=2", "parallel.cp=2"], 4),
        (["parallel.pp=2", "parallel.tp=2", "parallel.sp=true"], 2),
    ],
)
def test_a_sequence_length_the_pipeline_cannot_take_is_refused_by_the_overrides(layout, multiple):
    overrides = [*REQUIRED, "data.max_length=4096", "trainer.seq_length=4097", *layout]
    if multiple is None:
        assert apply_overrides(SFTConfig(), overrides).trainer.seq_length == 4097
        return
    with pytest.raises(ConfigError, match=rf"trainer\.seq_length 4097 is not a multiple of {multiple}:"):
        apply_overrides(SFTConfig(), overrides)


def _leaf_keys(config: object, prefix: str = "") -> list[str]:
    import dataclasses

    keys = []
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{spec.name}.")
        else:
            keys.append(f"{prefix}{spec.name}")
    return keys


def test_every_key_of_every_command_is_documented():
    """A key counts as documented when docs/config.md names it in full (`trainer.seq_length`) or in a
    table row that starts with its section (`trainer`) and lists it; eval's and distill's own keys, in a
    row that starts with them."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| `")]

    def documented(key: str) -> bool:
        section, _, leaf = key.rpartition(".")
        if section and f"`{key}`" in docs:
            return True
        return any(row.startswith(f"| `{section or leaf}`") and f"`{leaf}`" in row for row in rows)

    keys = {
        key
        for config in (SFTConfig(), GRPOConfig(), EvalConfig(), DistillConfig())
        for key in _leaf_keys(config)
    }
    assert len(keys) > 100
    assert sorted(key for key in keys if not documented(key)) == []


def test_the_key_reference_in_the_docs_is_what_the_schema_makes():
    """docs/config.md's "Every key" is generated from the schema's fields and comments; a new field,
    a changed default or comment, or an edit by hand shows here."""
    from pathlib import Path

    from xr_nemo.config.reference import with_reference

    docs = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert with_reference(docs) == docs, "run: python -m xr_nemo.config.reference docs/config.md"
