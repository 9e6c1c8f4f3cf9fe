"""Which stored predictions a run reuses: each benchmark's rows compared with the records this run would
write (`xr_nemo.eval.provenance`), said before generating, and — once generation is over — the file
settled and only matching rows handed on to scoring (evaluation) or filtering (distillation)."""

from __future__ import annotations

import sys
from pathlib import Path

from xr_nemo.config.schema import EvalConfig
from xr_nemo.eval.engines import engine_kind
from xr_nemo.eval.predictions import read_stored, settle
from xr_nemo.eval.provenance import Plan, Producer, generation_settings, model_identity, plan_rows
from xr_nemo.tasks.benchmarks import Benchmark, EvalItem

Loaded = dict[str, tuple[list[EvalItem], list]]


def first_seeds(config: EvalConfig, count: int) -> list[int]:
    """Item i's first seed (its samples take the next ones): a function of the item's place only, so a
    resumed or data-parallel evaluation samples what a single uninterrupted one would."""
    return [config.generation.seed + index * config.samples for index in range(count)]


def producers(config: EvalConfig, model_dir: Path, benchmarks: list[Benchmark]) -> dict[str, Producer]:
    """What generates each benchmark's rows now: this model, these settings, the benchmark's engine."""
    identity = model_identity(model_dir)
    sampled = config.generation.temperature > 0
    return {
        b.name: Producer(
            identity, generation_settings(config, engine_kind(config, b)), config.samples, sampled
        )
        for b in benchmarks
    }


def plan_benchmark(
    config: EvalConfig, out_dir: Path, name: str, items: list[EvalItem], producer: Producer
) -> Plan:
    """Which stored rows are reused and which items are generated (again), with the reasons."""
    stored = read_stored(out_dir, name)
    plan = plan_rows(items, first_seeds(config, len(items)), stored.rows, producer)
    plan.damaged = stored.damaged
    return plan


def announce_plans(
    config: EvalConfig, out_dir: Path, loaded: Loaded, made_by: dict[str, Producer], label: str = "eval"
) -> dict[str, Plan]:
    """Each benchmark's plan, said before generating: damaged lines with their file:line, then the
    counts of rows reused and of items generated, by reason."""
    plans = {}
    for name, (items, _) in loaded.items():
        plan = plans[name] = plan_benchmark(config, out_dir, name, items, made_by[name])
        for damaged in plan.damaged:
            print(f"[{label}] {damaged}; left out, its item is generated again", file=sys.stderr, flush=True)
        print(f"[{label}] {name}: {plan.message()}", flush=True)
    return plans


def current_rows(
    config: EvalConfig, out_dir: Path, name: str, items: list[EvalItem], producer: Producer
) -> dict[str, dict]:
    """After generation: the file settled (parts merged, damaged lines and replaced rows dropped), and
    the rows by item id whose record matches what produced them now — no stale row is ever scored."""
    settle(out_dir, name, [item.id for item in items])
    rows = read_stored(out_dir, name).rows
    plan = plan_rows(items, first_seeds(config, len(items)), rows, producer)
    return {item_id: rows[item_id] for item_id in plan.reused}
