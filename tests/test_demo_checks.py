"""The demo report's sanity checks, as pure functions against references computed here another way:
McNemar's exact test, the restated expression, the trivial rules, the world's splits and probes, and
the summary over seeds."""

import json
from collections import Counter
from fractions import Fraction
from math import comb

import pytest
from PIL import Image, ImageChops

from xr_nemo.demo.checks import RULES, Paired, TrivialRule, best_trivial_rule, mcnemar_p, restated
from xr_nemo.demo.report import write_seed_summary
from xr_nemo.demo.toy_world import UNSEEN, Problem, split_problems, write_toy_world
from xr_nemo.tasks.benchmarks import get_benchmark


def _binomial_test(k: int, n: int) -> float:
    """Two-sided exact binomial test at 1/2 by its definition: the probability of every outcome no
    more likely than the one observed."""
    probability = [Fraction(comb(n, j), 2**n) for j in range(n + 1)]
    return float(sum(p for p in probability if p <= probability[k]))


@pytest.mark.parametrize(("fixed", "broke"), [(0, 5), (1, 6), (16, 17), (3, 3), (40, 12), (9, 0), (0, 0)])
def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_items(fixed, broke):
    expected = _binomial_test(fixed, fixed + broke) if fixed + broke else 1.0
    assert mcnemar_p(fixed, broke) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_by_hand():
    assert mcnemar_p(0, 5) == 2 / 32  # both all-one-way outcomes of 5 coin flips
    assert mcnemar_p(1, 6) == 2 * 8 / 128
    assert mcnemar_p(16, 17) == 1.0


def test_paired_counts_items_fixed_and_broken():
    before = {"a": True, "b": False, "c": False, "d": True, "e": False}
    after = {"a": False, "b": True, "c": True, "d": True, "e": False}
    paired = Paired.of(before, after)
    assert (paired.fixed, paired.broke) == (2, 1)
    assert paired.p == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Paired.of(before, {"a": True})


def test_restated_reads_the_expression_the_reasoning_begins_with():
    problem = Problem("7+2-2-1")
    assert restated(problem.trace()) == "7+2-2-1"
    assert restated(problem.direct()) == "7+2-2-1"
    assert restated("<think>\nThe expression:\n7+2-3-1\n7+2=9.\n</think>") == "7+2-3-1"
    assert restated("<answer>6</answer>") is None
    assert restated("<think>\n7+2=9.\n</think>") is None


def test_trivial_rules_take_the_majority_per_key_with_a_fallback():
    training = ["1+1+1+1", "2+1+1+1", "5-1-1-1", "3+3-3+1"]  # answers 4, 5, 2, 4
    last = TrivialRule.fit("the most common answer given the last term", training)
    assert last("9-1-1-1") == "2"  # "-1": only 5-1-1-1
    assert last("0+1+2+1") == "4"  # "+1": 4 twice, 5 once
    assert last("0+1+1+5") == "4"  # "+5" never seen: the overall majority
    constant = TrivialRule.fit("the most common answer", training)
    assert {constant(e) for e in ("9-1-1-1", "0+1+2+1")} == {"4"}


def _accuracy_by_hand(name: str, training: list[str], scored: list[str]) -> float:
    key = RULES[name]
    counts: dict[object, Counter] = {}
    for expression in training:
        counts.setdefault(key(expression), Counter())[Problem(expression).answer] += 1
    overall = sum(counts.values(), Counter())

    def guess(expression: str) -> str:
        table = counts.get(key(expression), overall)
        top = max(table.values())
        return min((a for a in table if table[a] == top), key=int)

    return sum(guess(e) == Problem(e).answer for e in scored) / len(scored)


def test_the_best_trivial_rule_is_chosen_on_validation_and_scored_as_by_hand():
    split = split_problems(train=600, prompts=0, held_out=100, validation=100, seed=5).expressions()
    best = best_trivial_rule(split["train"], split["validation"])
    on_validation = {name: _accuracy_by_hand(name, split["train"], split["validation"]) for name in RULES}
    assert on_validation[best.name] == max(on_validation.values())
    test = split["test"]
    assert best.correct(test) / len(test) == _accuracy_by_hand(best.name, split["train"], test)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_world_splits_are_disjoint_and_probes_show_what_they_claim(tmp_path):
    world = write_toy_world(tmp_path, train=30, prompts=6, held_out=10, validation=8, probes=5, seed=2)
    split = json.loads(world.split.read_text())
    sizes = {name: len(expressions) for name, expressions in split.items()}
    assert sizes == {"test": 10, "train": 30, "rl": 6, "validation": 8}
    every = [e for expressions in split.values() for e in expressions]
    assert len(set(every)) == len(every)
    assert [row["expression"] for row in _jsonl(world.val_text)] == split["validation"]

    test, probes = split["test"], _jsonl(world.probe_image)
    assert [row["expression"] for row in probes if row["id"][0] == "v"] == split["validation"]
    unseen = [row for row in probes if row["id"][0] == "u"]
    assert [row["expression"] for row in unseen] == test[:5]
    assert [row["answer"] for row in _jsonl(world.probe_read)] == test[:5]
    for index, row in enumerate(unseen):
        assert row["answer"] == Problem(test[index]).answer
        seen = Image.open(tmp_path / f"images/eval-{index}.png").convert("L")
        drawn = Image.open(tmp_path / row["image"]).convert("L")
        assert seen.size == drawn.size and ImageChops.difference(seen, drawn).getbbox() is not None
    assert (
        Problem("1+2+3+4").image(UNSEEN, seed=7).tobytes()
        == Problem("1+2+3+4").image(UNSEEN, seed=7).tobytes()
    )

    sanity = _jsonl(world.sanity_image)
    shuffled = [row for row in sanity if row["id"].startswith("s")]
    assert sorted(int(row["id"][1:]) for row in shuffled) == list(range(5))
    for row in shuffled:
        shown = int(row["image"].split("-")[1].split(".")[0])
        assert shown != int(row["id"][1:]) and row["shown_answer"] == Problem(test[shown]).answer
    for row in (row for row in sanity if row["id"].startswith("b")):
        assert Image.open(tmp_path / row["image"]).convert("L").getextrema() == (255, 255)


def test_the_benchmark_reader_carries_the_expression_and_the_shown_answer(tmp_path):
    world = write_toy_world(tmp_path, train=4, prompts=2, held_out=4, validation=0, probes=3, seed=1)
    items = list(get_benchmark("arith_image").items(str(world.sanity_image)))
    rows = _jsonl(world.sanity_image)
    assert [item.meta["expression"] for item in items] == [row["expression"] for row in rows]
    assert [item.meta.get("shown_answer") for item in items] == [row.get("shown_answer") for row in rows]


def test_seed_summary_gives_mean_and_sd_per_cell(tmp_path):
    values = [0.2, 0.3, 0.7]
    dirs = []
    for seed, value in enumerate(values):
        directory = tmp_path / f"seed-{seed}"
        directory.mkdir()
        cells = {"accuracy": {"base": {"text": value}}, "sanity": {"rule": {"accuracy": 0.25}}}
        (directory / "report.json").write_text(json.dumps({"cells": cells}))
        dirs.append(directory)
    summary = write_seed_summary(tmp_path, dirs).read_text()
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert f"| base | {100 * mean:.1f} ± {100 * sd:.1f} % |" in summary
    assert "| rule | 25.0 ± 0.0 % |" in summary
    assert "[seed-2](seed-2/report.md)" in summary


def test_demo_seeds_runs_each_seed_in_its_own_directory_and_sums_them_up(tmp_path, monkeypatch):
    from xr_nemo import cli
    from xr_nemo.demo import pipeline

    calls = []

    def fake_run(run_dir, quick=False, seed=0):
        calls.append((run_dir.name, quick, seed))
        run_dir.mkdir(parents=True)
        cells = {"accuracy": {"base": {"text": 0.1 * (seed + 1)}}}
        (run_dir / "report.json").write_text(json.dumps({"cells": cells}))

    monkeypatch.setattr(pipeline, "run_demo", fake_run)
    assert cli.main(["demo", "--quick", "--seeds", "2", "--run-dir", str(tmp_path)]) == 0
    assert calls == [("seed-0", True, 0), ("seed-1", True, 1)]
    assert "| base | 15.0 ± 7.1 % |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--seeds", "0"])


@pytest.mark.parametrize(
    ("cot_steps", "cot_samples", "samples", "epochs"),
    [(546, 8990, 3000, 3), (232, 3824, 960, 4), (7, 20, 10, 2), (100, 100, 100, 1)],
)
def test_the_control_gets_the_cot_runs_step_count_within_its_epochs(cot_steps, cot_samples, samples, epochs):
    from xr_nemo.demo.pipeline import control_steps

    overrides = dict(item.split("=") for item in control_steps(cot_steps, cot_samples))
    per_step = int(overrides["trainer.global_batch_samples"])
    assert overrides["trainer.max_steps"] == str(cot_steps)
    assert overrides["trainer.global_batch_size"] == "null"
    assert per_step <= cot_samples / cot_steps < per_step + 1
    steps_per_epoch = -(-samples // per_step)  # docs/sft.md: ceil(samples / global_batch_samples)
    assert steps_per_epoch * epochs >= cot_steps
