"""Hostile reruns: an evaluation or a distillation rerun into the same output after its inputs changed.
Every stored row records what produced it (model, item, generation settings, seed), so a rerun reuses
exactly the rows the same producer would write again, generates the rest, says how many of each and
why, names the checkpoint it evaluates, and reports a damaged predictions line with its file:line
instead of a traceback. Each case: exit 0, no traceback, the messages, exactly the expected items
generated, and every file that existed before byte-identical unless the rerun's purpose was to replace
it. Generation is scripted (the engine factory is replaced); everything else is the real command."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from xr_nemo import cli

from helpers.eval_fixtures import write_fixtures
from helpers.hostile import Outcome, assert_unchanged, run_cli, snapshot

ITEMS = 6  # medqa's usable fixture items, medqa-0 … medqa-5, one predictions line each in item order
OUTPUT = "<think>é → A</think><answer>A</answer>"  # a multi-byte character on every predictions line


class ScriptedEngine:
    """Answers A, and keeps the number ("[medqa N]") of every question it is asked."""

    asked: ClassVar[list[int]] = []  # shared by the engines of one command

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def sample(self, prompts, seeds, sampling):
        from xr_nemo.generation.engine import Completion, token_ids

        ids = self.tokenizer.encode(OUTPUT, add_special_tokens=False)
        for prompt in prompts:
            ScriptedEngine.asked.append(
                int(re.search(r"\[medqa (\d+)\]", self.tokenizer.decode(token_ids(prompt)))[1])
            )
        return [Completion(list(ids), [0.0] * len(ids), finished=True) for _ in prompts]

    def close(self) -> None:
        pass


def _scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "xr_nemo.eval.engines.build_engine", lambda generation, model_dir, **_: ScriptedEngine(model_dir)
    )
    ScriptedEngine.asked = []


@dataclass
class World:
    root: Path

    model = property(lambda self: self.root / "model")  # the evaluated HF model
    other = property(lambda self: self.root / "other")  # another model: other weights, same tokenizer
    data = property(lambda self: self.root / "data" / "medqa.jsonl")
    out = property(lambda self: self.root / "out")  # `eval --model model` wrote here
    run = property(lambda self: self.root / "run")  # step_1, its export hf/, and `eval --model run` in eval/
    next_step = property(lambda self: self.root / "next_step")  # a checkpoint of `other`, for step_2
    distilled = property(lambda self: self.root / "distilled")  # `distill --teacher model` wrote here

    def predictions(self) -> Path:
        return self.out / "predictions" / "medqa.jsonl"

    def eval_argv(self, model: Path | None = None, *more: str) -> list:
        argv = ["eval", "--model", model or self.model, "--benchmarks", "medqa", f"+data.medqa={self.data}"]
        return argv + ([] if model == self.run else [f"out_dir={self.out}"]) + ["max_new_tokens=16", *more]

    def distill_argv(self, teacher: Path) -> list:
        data = ["--data", self.data, "--schema", "medqa", "--out", self.distilled]
        return ["distill", "--teacher", teacher, *data, "samples=2", "max_new_tokens=16"]


def _outputs(out: Path) -> list[Path]:
    """What an evaluation replaces by purpose."""
    return [
        out / "predictions" / "medqa.jsonl",
        out / "summary.json",
        out / "report.md",
        out / "accuracy.png",
    ]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    from xr_nemo.conversion.convert import export_hf, import_hf
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    world = World(tmp_path_factory.mktemp("reruns"))
    build_tiny_qwen25_vl(world.model)
    build_tiny_qwen25_vl(world.other, seed=1)
    write_fixtures(world.root / "data", ["medqa"])
    import_hf(world.model, world.run / "checkpoints" / "step_1", progress=False)
    (world.run / "checkpoints" / "latest").write_text("step_1\n")
    (world.run / "config.yaml").write_text("run:\n  dir: run\n")
    export_hf(world.run / "checkpoints" / "step_1", world.run / "hf", progress=False)
    import_hf(world.other, world.next_step, progress=False)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _scripted(monkeypatch)
        for argv in (world.eval_argv(), world.eval_argv(world.run), world.distill_argv(world.model)):
            assert cli.main([str(arg) for arg in argv]) == 0
    return world.root


@pytest.fixture
def world(originals, tmp_path) -> World:
    root = tmp_path / "world"
    shutil.copytree(originals, root, symlinks=True)
    return World(root)


def _rerun(world: World, argv: list, capsys, monkeypatch, replaced: list[Path]) -> Outcome:
    before = snapshot(world.root)
    _scripted(monkeypatch)
    outcome = run_cli(argv, capsys)
    assert outcome.code == 0, outcome.output
    assert "Traceback" not in outcome.output, outcome.output
    assert_unchanged(before, snapshot(world.root), replaced=replaced)
    return outcome


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


# ---- evaluation: what changed since the first run, what is generated again, what is said ------------
@dataclass
class Case:
    name: str
    change: Callable[[World], None]  # done to the world before the rerun
    argv: Callable[[World], list]
    generated: set[int]  # the medqa items generated again
    says: Callable[[World], list[str]]  # in the output
    replaced: Callable[[World], list[Path]] = lambda w: _outputs(w.out)


def _edit_item(world: World) -> None:
    """One question's text changes; its id (its place) stays."""
    lines = world.data.read_text().splitlines(keepends=True)
    assert "[medqa 2]" in lines[2]
    lines[2] = lines[2].replace("chest pain", "back pain")
    world.data.write_text("".join(lines))


def _replace_weights(world: World) -> None:
    """The model directory's weights replaced in place (same name, same size: other values)."""
    shutil.copyfile(world.other / "model.safetensors", world.model / "model.safetensors")


def _train_on(world: World) -> None:
    """Training went on: a newer checkpoint, step_2, with other weights, is now the latest."""
    world.next_step.rename(world.run / "checkpoints" / "step_2")
    (world.run / "checkpoints" / "latest").write_text("step_2\n")


def _export_source(world: World) -> str:
    return json.loads((world.run / "hf" / "xr_nemo.json").read_text())["source"]


def _strip_records(world: World) -> None:
    """Rows as an xr-nemo from before records were kept wrote them."""
    rows = _rows(world.predictions())
    world.predictions().write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "record"}) + "\n" for r in rows)
    )


CASES = [
    Case(
        "nothing-changed",
        lambda w: None,
        lambda w: w.eval_argv(),
        set(),
        lambda w: ["medqa: reused 6, nothing to generate"],
        lambda w: _outputs(w.out)[1:],  # the predictions file stays as it is
    ),
    Case(
        "one-benchmark-item-edited",
        _edit_item,
        lambda w: w.eval_argv(),
        {2},
        lambda w: ["medqa: reused 5, generating 1 (1 changed)"],
    ),
    Case(
        "model-weights-replaced",
        _replace_weights,
        lambda w: w.eval_argv(),
        set(range(ITEMS)),
        lambda w: ["medqa: reused 0, generating 6 (6 from another model)"],
    ),
    Case(
        "samples-raised",
        lambda w: None,
        lambda w: w.eval_argv(None, "samples=2"),
        set(range(ITEMS)),
        lambda w: ["medqa: reused 0, generating 6 (6 with other generation settings)"],
    ),
    Case(
        "generation-settings-changed",
        lambda w: None,
        lambda w: w.eval_argv(None, "thinking_budget=8"),
        set(range(ITEMS)),
        lambda w: ["medqa: reused 0, generating 6 (6 with other generation settings)"],
    ),
    Case(
        "rows-from-before-records",
        _strip_records,
        lambda w: w.eval_argv(),
        set(range(ITEMS)),
        lambda w: ["medqa: reused 0, generating 6 (6 without a record (written before records were kept))"],
    ),
    Case(
        "run-directory-moved",  # every test's world is a copy: the export is still its newest checkpoint's
        lambda w: None,
        lambda w: w.eval_argv(w.run),
        set(),
        lambda w: [
            f"using {w.run / 'hf'}, the export of the newest checkpoint {w.run / 'checkpoints' / 'step_1'}",
            "medqa: reused 6, nothing to generate",
        ],
        lambda w: _outputs(w.run / "eval")[1:],
    ),
    Case(
        "run-export-without-a-record",  # an export by an earlier xr-nemo: made again, the same weights
        lambda w: (w.run / "hf" / "xr_nemo.json").unlink(),
        lambda w: w.eval_argv(w.run),
        set(),
        lambda w: [
            f"{w.run / 'hf'} does not record which checkpoint it was exported from: exporting the newest "
            f"checkpoint {w.run / 'checkpoints' / 'step_1'} → {w.run / 'hf'}",
            "medqa: reused 6, nothing to generate",  # the model's identity is its contents
        ],
        lambda w: [w.run / "hf", *_outputs(w.run / "eval")[1:]],
    ),
    Case(
        "run-trained-further",
        _train_on,
        lambda w: w.eval_argv(w.run),
        set(range(ITEMS)),
        lambda w: [
            f"{w.run / 'hf'} was exported from {_export_source(w)}, not from the newest checkpoint: "
            f"exporting the newest checkpoint {w.run / 'checkpoints' / 'step_2'} → {w.run / 'hf'}",
            "medqa: reused 0, generating 6 (6 from another model)",
        ],
        lambda w: [w.run / "hf", *_outputs(w.run / "eval")],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_rerun_reuses_only_what_the_same_producer_made(world, capsys, monkeypatch, case):
    case.change(world)
    says = case.says(world)
    outcome = _rerun(world, case.argv(world), capsys, monkeypatch, case.replaced(world))
    for needle in says:
        assert needle in outcome.output, f"{needle!r} not in:\n{outcome.output}"
    samples = 2 if "samples=2" in case.argv(world) else 1
    assert sorted(ScriptedEngine.asked) == sorted(list(case.generated) * samples)  # each sample is asked
    out = world.run / "eval" if case.name.startswith("run-") else world.out
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]["medqa"]
    assert (summary["n"], summary["reused"], summary["generated"]) == (
        ITEMS,
        ITEMS - len(case.generated),
        len(case.generated),
    )
    rows = _rows(out / "predictions" / "medqa.jsonl")
    assert [row["id"] for row in rows] == [f"medqa-{i}" for i in range(ITEMS)]  # one row per item, in order


def test_a_rerun_with_two_samples_scores_two_samples(world, capsys, monkeypatch):
    """Rows of one sample are never scored as avg@2 / pass@2: they are generated again with two."""
    _rerun(world, world.eval_argv(None, "samples=2"), capsys, monkeypatch, _outputs(world.out))
    summary = json.loads((world.out / "summary.json").read_text())["benchmarks"]["medqa"]
    assert all(len(row["outputs"]) == 2 for row in _rows(world.predictions()))
    assert summary["avg@2"] == summary["pass@2"] == summary["accuracy"] > 0  # "A" is medqa-0's and -4's gold


def test_the_run_is_evaluated_at_its_newest_checkpoint_and_named(world, capsys, monkeypatch):
    _train_on(world)
    outcome = _rerun(
        world,
        world.eval_argv(world.run),
        capsys,
        monkeypatch,
        [world.run / "hf", *_outputs(world.run / "eval")],
    )
    newest = world.run / "checkpoints" / "step_2"
    info = json.loads((world.run / "hf" / "xr_nemo.json").read_text())
    assert info["source"] == str(newest.resolve())
    summary = json.loads((world.run / "eval" / "summary.json").read_text())
    assert summary["exported_from"] == str(newest.resolve())
    assert f"the export of `{newest.resolve()}`" in (world.run / "eval" / "report.md").read_text()
    # and again: the export is now the newest checkpoint's, so it is used as it is and named
    ScriptedEngine.asked = []
    again = _rerun(world, world.eval_argv(world.run), capsys, monkeypatch, _outputs(world.run / "eval"))
    assert f"using {world.run / 'hf'}, the export of the newest checkpoint {newest}" in again.output
    assert "medqa: reused 6, nothing to generate" in again.output and ScriptedEngine.asked == []
    assert "exporting" not in again.output and "exporting" in outcome.output


# ---- damaged predictions lines ---------------------------------------------------------------------
def _cut_inside_a_character(line: bytes) -> bytes:
    return line[: line.index("é".encode()) + 1]


DAMAGE = [
    # (name, line number, what becomes of the line, what the message says)
    ("cut-inside-a-multibyte-character", 2, _cut_inside_a_character, "not UTF-8 at byte"),
    ("not-json", 3, lambda line: b'{"id": "medqa-2", "outputs": [', "not JSON"),
    (
        "no-id",
        4,
        lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "id"}).encode(),
        "no item id",
    ),
    ("an-array", 5, lambda line: b"[1, 2]", "not a JSON object but list"),
]


@pytest.mark.parametrize(("name", "number", "damage", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_predictions_line_is_reported_dropped_and_regenerated(
    world, capsys, monkeypatch, name, number, damage, says
):
    path = world.predictions()
    lines = _lines(path)
    lines[number - 1] = damage(lines[number - 1])
    path.write_bytes(b"\n".join(lines) + b"\n")
    good = [line for i, line in enumerate(lines) if i != number - 1]
    outcome = _rerun(world, world.eval_argv(), capsys, monkeypatch, _outputs(world.out))
    assert f"{path}:{number}: {says}" in outcome.output, outcome.output
    assert "left out, its item is generated again" in outcome.output
    assert "medqa: reused 5, generating 1 (1 missing)" in outcome.output
    assert ScriptedEngine.asked == [number - 1]
    after = _lines(path)
    assert len(after) == ITEMS and all(line in after for line in good)  # the good lines, byte for byte
    assert _rows(path)[number - 1]["id"] == f"medqa-{number - 1}"


def test_a_last_line_cut_short_is_reported_and_regenerated(world, capsys, monkeypatch):
    path = world.predictions()
    lines = _lines(path)
    path.write_bytes(b"\n".join([*lines[:-1], lines[-1][:19]]))  # the last line, 19 bytes of it
    outcome = _rerun(world, world.eval_argv(), capsys, monkeypatch, _outputs(world.out))
    assert f"{path}:{ITEMS}: not JSON" in outcome.output and "cut short by an interruption" in outcome.output
    assert ScriptedEngine.asked == [ITEMS - 1]
    assert _lines(path)[:-1] == lines[:-1]


# ---- distillation ------------------------------------------------------------------------------------
def test_distill_with_another_teacher_keeps_none_of_the_first_teachers_verdicts(world, capsys, monkeypatch):
    from xr_nemo.eval.provenance import model_identity

    out = world.distilled
    replaced = [out / "predictions" / "medqa.jsonl", out / "traces.jsonl", out / "stats.json"]
    outcome = _rerun(world, world.distill_argv(world.other), capsys, monkeypatch, replaced)
    assert "medqa: reused 0, generating 6 (6 from another model)" in outcome.output
    assert sorted(ScriptedEngine.asked) == sorted(list(range(ITEMS)) * 2)  # two samples each
    identity = model_identity(world.other)
    assert identity != model_identity(world.model)
    assert all(row["record"]["model"] == identity for row in _rows(out / "predictions" / "medqa.jsonl"))
    traces = _rows(out / "traces.jsonl")
    assert traces and all(trace["teacher"] == identity for trace in traces)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["teacher"], stats["teacher_identity"]) == (str(world.other), identity)
    # the same teacher again: everything reused, the traces rewritten identically
    before = (out / "traces.jsonl").read_bytes()
    again = _rerun(world, world.distill_argv(world.other), capsys, monkeypatch, replaced)
    assert "medqa: reused 6, nothing to generate" in again.output and ScriptedEngine.asked == []
    assert (out / "traces.jsonl").read_bytes() == before


def test_the_seed_counts_only_when_sampling():
    """An item whose place in the file moved keeps its id and content but gets other seeds: its row is
    generated again when sampling, and reused when greedy (the seeds do not change a greedy output)."""
    from xr_nemo.eval.provenance import Producer, why_stale
    from xr_nemo.tasks.benchmark import EvalItem

    item = EvalItem("q-1", "What is 2 + 2?", "4")
    row = {"id": "q-1", **{key: ["x"] for key in ("outputs", "answers", "methods", "correct", "forced_exit")}}
    for sampled, reason in ((True, "seed"), (False, None)):
        producer = Producer("model", {"samples": 1}, samples=1, sampled=sampled)
        row["record"] = producer.record(item, first_seed=7)
        assert why_stale(row, producer.record(item, first_seed=7), producer) is None
        assert why_stale(row, producer.record(item, first_seed=8), producer) == reason
    assert why_stale({**row, "outputs": []}, row["record"], producer) == "malformed"
    assert why_stale(None, row["record"], producer) == "missing"
