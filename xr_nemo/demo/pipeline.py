"""`xr-nemo demo` (`make demo`): does reasoning learned from text alone transfer to images?

The X-Reasoner recipe on a toy world (`xr_nemo.demo.toy_world`), end to end on a CPU:

1. world — four-term single-digit arithmetic; training problems as text (and, for the base model, as
   pictures), held-out problems as text, as pictures, and as pictures to transcribe; validation
   problems; and probes of the held-out problems (pictures in an unseen style, shuffled, blank).
2. base — a tiny random Qwen2.5-VL taught to read the pictures and answer directly (`demo.base`): the
   stand-in for the instruction-tuned checkpoint.
3. sft — `xr-nemo sft --recipe demo`: text-only chain-of-thought SFT (a teacher's step-by-step traces).
4. sft_direct — the paper's control: the same SFT from the same base on direct answers (no CoT), for
   as many optimizer steps as stage 3 took (`control_steps`).
5. grpo — `xr-nemo grpo --recipe demo`: text-only GRPO with the 0/1 answer reward, from stage 3.
6. After every stage: `xr-nemo eval` on the held-out problems (text, pictures, transcription), on the
   validation problems, and on the unseen-style pictures; after the last, on the shuffled and blank
   pictures too.
7. The final export is loaded back with Transformers and answers a few pictures.
8. `report.md` (`demo.report`): accuracy per stage and modality, sanity checks, paired tests, curves,
   timings and a conclusion.

`--seeds N` runs the whole demo once per seed (world split and initialisation) into `seed-<k>/`, and
sums the seeds up in `summary.md`.

Every stage is reused when its output exists, and the training stages resume from their checkpoints,
so running the demo again continues where it stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xr_nemo.demo.base import train_base
from xr_nemo.demo.report import StageResult, write_report, write_seed_summary
from xr_nemo.demo.toy_world import ToyWorld, write_toy_world
from xr_nemo.errors import XrNemoError
from xr_nemo.models.registry import DEFAULT_FAMILY, family_for_dir, family_named
from xr_nemo.recipes import demo as demo_recipe
from xr_nemo.training.metrics import METRICS_FILE

RELOADED_PICTURES = 8
# The tiny model (see `demo.base` for why its rotary embedding gives the width axis everything).
MODEL = {"num_kv_heads": 2, "rope_sections": (0, 0, 32)}  # over the family's tiny spec


@dataclass(frozen=True)
class DemoScale:
    train: int  # training problems (base and SFT); GRPO gets `prompts` others
    prompts: int
    held_out: int
    validation: int
    probes: int  # held-out problems also drawn in the unseen style, shuffled and blank
    merger_steps: int
    base_steps: int
    sft_epochs: int
    grpo_steps: int
    max_new_tokens: int


FULL = DemoScale(
    train=3000,
    prompts=1024,
    held_out=200,
    validation=200,
    probes=200,
    merger_steps=300,
    base_steps=600,
    sft_epochs=3,
    grpo_steps=32,
    max_new_tokens=64,
)
QUICK = DemoScale(
    train=960,
    prompts=64,
    held_out=40,
    validation=8,  # small: the probes go through Transformers, slow on a CPU
    probes=8,
    merger_steps=150,
    base_steps=400,
    sft_epochs=4,
    grpo_steps=2,
    max_new_tokens=64,
)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _cli(args: list[str], stage: str) -> None:
    """Run one `xr-nemo` command as a user would; its output streams through."""
    _say(f"$ xr-nemo {' '.join(args)}")
    result = subprocess.run([sys.executable, "-m", "xr_nemo.cli", *args], check=False)
    if result.returncode != 0:
        raise XrNemoError(
            f"the demo's {stage} stage failed (exit code {result.returncode})",
            where=f"xr-nemo {args[0]}",
            fix="see its message above; run `make demo` again to continue from the last checkpoint",
        )


def _exported(run: Path) -> bool:
    return (run / "hf" / "config.json").exists()


def control_steps(cot_steps: int, cot_samples: int) -> list[str]:
    """Overrides that give the control as many optimizer steps as the CoT SFT took (`cot_steps`, on
    `cot_samples` in all). Packed 4 sequences a step like the CoT traces, its shorter direct answers
    would fit in fewer steps; instead each of its steps takes the CoT run's mean samples per step,
    rounded down (so its epochs, as many samples as the CoT run's, hold at least that many steps), and
    it stops at the CoT run's count (ours)."""
    per_step = cot_samples // cot_steps
    return [
        "trainer.global_batch_size=null",
        f"trainer.global_batch_samples={per_step}",
        f"trainer.max_steps={cot_steps}",
    ]


class Demo:
    def __init__(self, run_dir: Path, scale: DemoScale, seed: int) -> None:
        self.run_dir, self.scale, self.seed = run_dir, scale, seed
        self.world = ToyWorld(run_dir / "world")
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, work) -> None:
        start = time.perf_counter()
        work()
        self.timings[name] = time.perf_counter() - start

    def world_stage(self) -> None:
        marker = self.run_dir / "world" / "scale.json"
        if marker.exists() and json.loads(marker.read_text()) == asdict(self.scale):
            _say(f"toy world reused: {self.world.root}")
            return
        s = self.scale
        write_toy_world(self.world.root, s.train, s.prompts, s.held_out, s.validation, s.probes, self.seed)
        marker.write_text(json.dumps(asdict(self.scale)) + "\n")
        _say(
            f"toy world written: {s.train} training problems, {s.prompts} RL prompts, {s.held_out} held out, "
            f"{s.validation} for validation"
        )

    def base_stage(self) -> None:
        base = self.run_dir / "base"
        if _exported(base):
            _say(f"base model reused: {base / 'hf'}")
            return
        start = family_named(DEFAULT_FAMILY).build_tiny(self.run_dir / "init", seed=self.seed, **MODEL)
        s = self.scale
        _, losses = train_base(
            start, self.world.base, base / "hf", s.base_steps, s.merger_steps, seed=self.seed
        )
        (base / "losses.json").write_text(json.dumps(losses) + "\n")

    def sft_stage(self, name: str = "sft") -> None:
        """Stage 1 on the CoT traces, or (`sft_direct`) the control on direct answers."""
        run = self.run_dir / name
        if _exported(run):
            _say(f"{name} reused: {run / 'hf'}")
            return
        data = self.world.sft if name == "sft" else self.world.sft_direct
        matched = [] if name == "sft" else control_steps(*self._cot_steps())
        _cli(
            [
                "sft",
                "--recipe",
                "demo",
                f"run.dir={run}",
                f"model.hf_dir={self.run_dir / 'base' / 'hf'}",
                f"data.train={data}",
                f"trainer.epochs={self.scale.sft_epochs}",
                *matched,
            ],
            name,
        )

    def _cot_steps(self) -> tuple[int, int]:
        """The CoT SFT's optimizer steps and the samples they took."""
        lines = (self.run_dir / "sft" / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        steps = {m["step"]: m["samples"] for m in map(json.loads, filter(str.strip, lines))}
        return max(steps), round(sum(steps.values()))

    def grpo_stage(self) -> None:
        run = self.run_dir / "grpo"
        if _exported(run):
            _say(f"grpo reused: {run / 'hf'}")
            return
        _cli(
            [
                "grpo",
                "--recipe",
                "demo",
                f"run.dir={run}",
                f"model.checkpoint={self.run_dir / 'sft'}",
                f"data.train={self.world.prompts}",
                f"trainer.max_steps={self.scale.grpo_steps}",
                f"rollout.max_new_tokens={self.scale.max_new_tokens}",
            ],
            "GRPO",
        )

    def evaluations(self, final: bool) -> dict[str, dict[str, Path]]:
        """Each evaluation of a stage (`eval/<stage><suffix>/`): benchmark → data file. The test problems
        first; then, in one run, the validation problems and the unseen-style pictures (the report tells
        them apart by id); the shuffled and blank pictures go to the final stage only."""
        w = self.world
        found = {
            "": {"arith_text": w.eval_text, "arith_image": w.eval_image, "arith_read": w.eval_read},
            "-probes": {"arith_text": w.val_text, "arith_image": w.probe_image, "arith_read": w.probe_read},
        }
        return {**found, "-sanity": {"arith_image": w.sanity_image}} if final else found

    def evaluate(self, stage: str, final: bool = False) -> StageResult:
        """The test problems through `xr-nemo eval`, as a user would; the probes in this process."""
        for suffix, data in self.evaluations(final).items():
            out = self.run_dir / "eval" / f"{stage}{suffix}"
            if (out / "summary.json").exists():  # written last: the evaluation finished
                _say(f"evaluation of {stage}{suffix} reused: {out}")
            elif suffix:
                self._probe(stage, data, out)
            else:
                self._evaluate_test(stage, data, out)
        return StageResult.read(stage, self.run_dir / "eval")

    def _evaluate_test(self, stage: str, data: dict[str, Path], out: Path) -> None:
        _cli(
            [
                "eval",
                "--model",
                str(self.run_dir / stage / "hf"),
                "--benchmarks",
                ",".join(data),
                *(f"+data.{benchmark}={path}" for benchmark, path in data.items()),
                "template=none",
                f"out_dir={out}",
                f"generation.max_new_tokens={self.scale.max_new_tokens}",
                "batch_size=32",
                "generation.kv_cache_gib=0.25",
            ],
            f"{stage} evaluation",
        )

    def _probe(self, stage: str, data: dict[str, Path], out: Path) -> None:
        """`xr-nemo eval`'s own function (`run_eval`), in this process and with Transformers: the probes
        are small, and a process and a vLLM engine per stage would cost more than they do."""
        from xr_nemo.config.schema import EngineKind, EvalConfig, PromptTemplate
        from xr_nemo.eval.run import run_eval

        _say(f"evaluation of {stage}, probes: {', '.join(path.name for path in data.values())} → {out}")
        config = EvalConfig(
            model=str(self.run_dir / stage / "hf"),
            benchmarks=list(data),
            data={benchmark: str(path) for benchmark, path in data.items()},
            out_dir=str(out),
            template=PromptTemplate.none,
            batch_size=32,
        )
        config.generation.engine = EngineKind.hf
        config.generation.max_new_tokens = self.scale.max_new_tokens
        run_eval(config)

    def reload_export(self) -> dict:
        """Transformers loads the final export and answers the first held-out pictures, greedy: its
        accuracy beside the evaluation's on the same items."""
        from transformers import AutoTokenizer

        from xr_nemo.config.schema import GenerationConfig
        from xr_nemo.eval.predictions import read_predictions
        from xr_nemo.generation.engine import Sampling
        from xr_nemo.generation.hf_engine import HFEngine
        from xr_nemo.rewards.extract import final_answer
        from xr_nemo.tasks.benchmarks import get_benchmark
        from xr_nemo.tasks.prompts import PromptBuilder

        export = self.run_dir / "grpo" / "hf"
        items = list(get_benchmark("arith_image").items(str(self.world.eval_image)))[:RELOADED_PICTURES]
        tokenizer = AutoTokenizer.from_pretrained(export)
        builder = PromptBuilder(tokenizer, family_for_dir(export).image_inputs(export), template="none")
        greedy = GenerationConfig(temperature=0.0, max_new_tokens=self.scale.max_new_tokens)
        sampling = Sampling.of(greedy, tokenizer)
        completions = HFEngine(export).sample([builder(item) for item in items], [0] * len(items), sampling)
        outputs = [
            tokenizer.decode([t for t in c.token_ids if t not in sampling.stop_token_ids])
            for c in completions
        ]
        rows = read_predictions(self.run_dir / "eval" / "grpo", "arith_image")
        return {
            "export": str(export),
            "item": items[0].id,
            "gold": items[0].gold,
            "output": outputs[0],
            "correct": sum(final_answer(o) == item.gold for o, item in zip(outputs, items, strict=True)),
            "evaluated_correct": sum(bool(rows[item.id]["correct"][0]) for item in items if item.id in rows),
            "n": len(items),
        }

    def run(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results = []
        self._timed("toy world", self.world_stage)
        self._timed("base model (Transformers loop)", self.base_stage)
        self._timed("evaluation of base", lambda: results.append(self.evaluate("base")))
        self._timed("stage 1: SFT on CoT traces", self.sft_stage)
        self._timed("evaluation of SFT", lambda: results.append(self.evaluate("sft")))
        self._timed("control: SFT on direct answers", lambda: self.sft_stage("sft_direct"))
        self._timed("evaluation of the control", lambda: results.append(self.evaluate("sft_direct")))
        self._timed("stage 2: GRPO", self.grpo_stage)
        self._timed("evaluation of SFT+GRPO", lambda: results.append(self.evaluate("grpo", final=True)))
        reloaded: dict = {}
        self._timed("reload of the export", lambda: reloaded.update(self.reload_export()))
        grpo = demo_recipe.grpo()
        report = write_report(
            self.run_dir,
            results,
            self.timings,
            reloaded,
            picture=self.world.root / "images" / "eval-0.png",
            completions_per_step=grpo.trainer.prompts_per_step * grpo.rollout.n,
        )
        _say(f"report: {report}")
        return report


def run_demo(run_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> Path:
    return Demo(Path(run_dir), QUICK if quick else FULL, seed).run()


def run_seeds(run_dir: str | Path, seeds: int, quick: bool = False) -> Path:
    """The demo once per seed 0 … seeds-1, each in `seed-<k>/`, then their `summary.md`."""
    root = Path(run_dir)
    dirs = [root / f"seed-{seed}" for seed in range(seeds)]
    for seed, directory in enumerate(dirs):
        _say(f"seed {seed} of {seeds}: {directory}")
        run_demo(directory, quick=quick, seed=seed)
    summary = write_seed_summary(root, dirs)
    _say(f"summary over {seeds} seeds: {summary}")
    return summary
