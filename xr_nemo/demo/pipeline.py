"""`xr-nemo demo` (`make demo`): does reasoning learned from text alone transfer to images?

The X-Reasoner recipe on a toy world (`xr_nemo.demo.toy_world`), end to end on a CPU:

1. world — four-term single-digit arithmetic; training problems as text (and, for the base model, as
   pictures), held-out problems as text, as pictures, and as pictures to transcribe.
2. base — a tiny random Qwen2.5-VL taught to read the pictures and answer directly (`demo.base`): the
   stand-in for the instruction-tuned checkpoint.
3. sft — `xr-nemo sft --recipe demo`: text-only chain-of-thought SFT (a teacher's step-by-step traces).
4. sft_direct — the paper's control: the same SFT from the same base on direct answers (no CoT).
5. grpo — `xr-nemo grpo --recipe demo`: text-only GRPO with the 0/1 answer reward, from stage 3.
6. After every stage: `xr-nemo eval` on the held-out problems (text, pictures, transcription).
7. The final export is loaded back with Transformers and answers a few pictures.
8. `report.md` (`demo.report`): accuracy per stage and modality, curves, timings and a conclusion.

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
from xr_nemo.demo.report import StageResult, write_report
from xr_nemo.demo.toy_world import ToyWorld, write_toy_world
from xr_nemo.errors import XrNemoError
from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl
from xr_nemo.recipes import demo as demo_recipe

BENCHMARKS = ("arith_text", "arith_image", "arith_read")
RELOADED_PICTURES = 8
# The tiny model (see `demo.base` for why its rotary embedding gives the width axis everything).
MODEL = TinyQwen25VLSpec(num_kv_heads=2, rope_sections=(0, 0, 32))


@dataclass(frozen=True)
class DemoScale:
    train: int  # training problems (base and SFT); GRPO gets `prompts` others
    prompts: int
    held_out: int
    merger_steps: int
    base_steps: int
    sft_epochs: int
    grpo_steps: int
    max_new_tokens: int


FULL = DemoScale(
    train=3000,
    prompts=1024,
    held_out=200,
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
        write_toy_world(self.world.root, s.train, s.prompts, s.held_out, seed=self.seed)
        marker.write_text(json.dumps(asdict(self.scale)) + "\n")
        _say(f"toy world written: {s.train} training problems, {s.prompts} RL prompts, {s.held_out} held out")

    def base_stage(self) -> None:
        base = self.run_dir / "base"
        if _exported(base):
            _say(f"base model reused: {base / 'hf'}")
            return
        start = build_tiny_qwen25_vl(self.run_dir / "init", MODEL, seed=self.seed)
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
        _cli(
            [
                "sft",
                "--recipe",
                "demo",
                f"run.dir={run}",
                f"model.hf_dir={self.run_dir / 'base' / 'hf'}",
                f"data.train={data}",
                f"trainer.epochs={self.scale.sft_epochs}",
            ],
            name,
        )

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

    def evaluate(self, stage: str) -> StageResult:
        out = self.run_dir / "eval" / stage
        if (out / "summary.json").exists():  # written last: the evaluation finished
            _say(f"evaluation of {stage} reused: {out}")
            return StageResult.read(stage, out)
        _cli(
            [
                "eval",
                "--model",
                str(self.run_dir / stage / "hf"),
                "--benchmarks",
                ",".join(BENCHMARKS),
                f"+data.arith_text={self.world.eval_text}",
                f"+data.arith_image={self.world.eval_image}",
                f"+data.arith_read={self.world.eval_read}",
                "template=none",
                f"out_dir={out}",
                f"generation.max_new_tokens={self.scale.max_new_tokens}",
                "batch_size=32",
                "generation.kv_cache_gib=0.25",
            ],
            f"{stage} evaluation",
        )
        return StageResult.read(stage, out)

    def reload_export(self) -> dict:
        """Transformers loads the final export and answers the first held-out pictures, greedy: its
        accuracy beside the evaluation's on the same items."""
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from xr_nemo.eval.predictions import read_predictions
        from xr_nemo.generation.engine import Sampling, chat_stop_ids
        from xr_nemo.generation.hf_engine import HFEngine
        from xr_nemo.rewards.extract import final_answer
        from xr_nemo.tasks.benchmarks import get_benchmark
        from xr_nemo.tasks.prompts import PromptBuilder

        export = self.run_dir / "grpo" / "hf"
        items = list(get_benchmark("arith_image").items(str(self.world.eval_image)))[:RELOADED_PICTURES]
        tokenizer = AutoTokenizer.from_pretrained(export)
        builder = PromptBuilder(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(export), template="none")
        sampling = Sampling(
            self.scale.max_new_tokens, temperature=0.0, stop_token_ids=chat_stop_ids(tokenizer)
        )
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
        self._timed("evaluation of SFT+GRPO", lambda: results.append(self.evaluate("grpo")))
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
