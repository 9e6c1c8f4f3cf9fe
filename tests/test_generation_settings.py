"""Every generation setting reaches the engine, in evaluation, distillation and GRPO: each field of
`GenerationConfig` is set to a value of its own, off its default, and the values a fake engine is built
with and asked to sample with must hold every one. A field added to `GenerationConfig` fails here until
it has a value below and reaches the engine; the demo's greedy sampling is unchanged by the constructor
they all share (`Sampling.of`)."""

import dataclasses
import json
import sys
from types import SimpleNamespace
from typing import ClassVar

import pytest

from xr_nemo.config.schema import DistillConfig, EngineKind, EvalConfig, GenerationConfig, GRPOConfig
from xr_nemo.generation.engine import Completion, Sampling

SETTINGS = {  # one value per field, off its default and unlike every other
    "engine": EngineKind.vllm,
    "temperature": 0.37,
    "top_p": 0.81,
    "max_new_tokens": 97,
    "thinking_budget": 131,  # above max_new_tokens: the whole Sampling reaches the engine in one call
    "gpu_memory_utilization": 0.63,
    "kv_cache_gib": 1.5,
    "tensor_parallel": 3,
    "seed": 4242,
}
# GRPO's engine seed is trainer.seed + rank, and every completion is seeded from trainer.seed
GRPO_IGNORES = {"seed"}


class FakeEngine:
    """Records what it is built with (`built`, with its kind) and every Sampling it is asked for."""

    collective = True  # GRPO's worker then samples without a process group
    made: ClassVar[list["FakeEngine"]] = []

    def __init__(self, kind: EngineKind, *args, **kwargs) -> None:
        self.kind, self.built, self.sampled = kind, {**dict(enumerate(args)), **kwargs}, []
        FakeEngine.made.append(self)

    def sample(self, prompts, seeds, sampling):
        self.sampled.append(sampling)
        return [Completion([7], [0.0], finished=True) for _ in prompts]

    def close(self) -> None:
        pass


@pytest.fixture
def fake_engines(monkeypatch):
    """The engine modules the factory imports, replaced (vLLM and the HF model are never loaded)."""
    FakeEngine.made = []
    vllm = SimpleNamespace(VLLMEngine=lambda *a, **k: FakeEngine(EngineKind.vllm, *a, **k))
    hf = SimpleNamespace(HFEngine=lambda *a, **k: FakeEngine(EngineKind.hf, *a, **k))
    monkeypatch.setitem(sys.modules, "xr_nemo.generation.vllm_engine", vllm)
    monkeypatch.setitem(sys.modules, "xr_nemo.generation.hf_engine", hf)
    return FakeEngine.made


def _received(engine: FakeEngine) -> list:
    """Every value the engine got: its kind, what it was built with, and each Sampling's fields."""
    values = [engine.kind, *engine.built.values()]
    for sampling in engine.sampled:
        values += [getattr(sampling, f.name) for f in dataclasses.fields(sampling)]
        values.append(sampling.forced_exit and sampling.forced_exit.budget)
    return values


def _missing(engines: list[FakeEngine], ignored: set[str] = frozenset()) -> list[str]:
    (engine,) = engines
    assert engine.sampled, "the engine was never asked to sample"
    received = _received(engine)
    return [name for name, value in SETTINGS.items() if name not in ignored and value not in received]


def test_every_generation_field_has_a_setting_of_its_own_off_its_default():
    defaults = GenerationConfig()
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(GenerationConfig)}
    assert all(value != getattr(defaults, name) for name, value in SETTINGS.items())
    assert len({str(value) for value in SETTINGS.values()}) == len(SETTINGS)


def _medqa(tmp_path):
    record = {"question": "Which nerve?", "options": {"A": "Radial", "B": "Ulnar"}, "answer_idx": "B"}
    path = tmp_path / "medqa.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def _evaluate(model, data, out, generation):
    from xr_nemo.eval.run import run_eval

    config = EvalConfig(model=str(model), benchmarks=["medqa"], data={"medqa": str(data)}, out_dir=str(out))
    config.generation = generation
    run_eval(config)


def _distill(model, data, out, generation):
    from xr_nemo.distill.run import run_distill

    run_distill(
        DistillConfig(
            teacher=str(model), data=str(data), schema="medqa", out=str(out), samples=1, generation=generation
        )
    )


@pytest.mark.parametrize("run", [_evaluate, _distill], ids=["eval", "distill"])
def test_every_generation_setting_reaches_the_engine_in_eval_and_distill(tmp_path, fake_engines, run):
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model")
    run(model, _medqa(tmp_path), tmp_path / "out", GenerationConfig(**SETTINGS))
    assert _missing(fake_engines) == []


def _grpo_worker(tmp_path, monkeypatch, rollout: dict):
    from transformers import AutoTokenizer

    from xr_nemo.grpo import run
    from xr_nemo.grpo.prompts import PromptItem, PromptSet
    from xr_nemo.models.qwen25_vl.tiny import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(tmp_path / "model")
    config = GRPOConfig()
    for name, value in rollout.items():
        setattr(config.rollout, name, value)
    monkeypatch.setattr(run.dist, "get_rank", lambda *args: 0)
    prompts = PromptSet([PromptItem("p", "1 + 1?", "2")], [[1, 2, 3]])
    tokenizer = AutoTokenizer.from_pretrained(model)
    return run._rollout_worker(config, model, tokenizer, SimpleNamespace(model=None), prompts, None)


def test_every_generation_setting_reaches_the_engine_in_grpo(tmp_path, monkeypatch, fake_engines):
    worker = _grpo_worker(tmp_path, monkeypatch, SETTINGS)
    worker._generate([0], seed=0)
    assert _missing(fake_engines, ignored=GRPO_IGNORES) == []


def test_the_engine_setting_chooses_the_engine(tmp_path, monkeypatch, fake_engines):
    """Evaluation would take vLLM for a text benchmark by itself, GRPO by default: `hf` must win."""
    from xr_nemo.eval.engines import Engines
    from xr_nemo.tasks.benchmarks import get_benchmark

    config = EvalConfig(model="m", benchmarks=["medqa"], generation=GenerationConfig(engine=EngineKind.hf))
    Engines(config, tmp_path, None, {"medqa": ([], [])}).get(get_benchmark("medqa"))
    _grpo_worker(tmp_path, monkeypatch, {"engine": EngineKind.hf})
    assert [engine.kind for engine in fake_engines] == [EngineKind.hf, EngineKind.hf]


def test_the_demos_greedy_sampling_is_unchanged_by_the_shared_constructor(tiny_tokenizer):
    from xr_nemo.generation.engine import chat_stop_ids

    made = Sampling.of(GenerationConfig(temperature=0.0, max_new_tokens=48), tiny_tokenizer)
    assert made == Sampling(48, temperature=0.0, stop_token_ids=chat_stop_ids(tiny_tokenizer))


def test_grpo_refuses_a_rollout_seed_it_would_ignore(tmp_path):
    """Its rollouts are seeded from trainer.seed (exact resume): a rollout.seed would change nothing."""
    from xr_nemo.errors import ConfigError
    from xr_nemo.grpo.run import check_config

    config = GRPOConfig()
    config.run.dir = str(tmp_path / "run")
    config.rollout.seed = 7
    with pytest.raises(ConfigError, match=r"rollout\.seed=7 is not used") as error:
        check_config(config)
    assert "trainer.seed" in error.value.fix
