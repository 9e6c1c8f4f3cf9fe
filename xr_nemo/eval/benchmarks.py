"""The benchmark registry: every benchmark of the text and image suites, by name."""

from __future__ import annotations

from xr_nemo.errors import ConfigError
from xr_nemo.eval import image_benchmarks, text_benchmarks, toy_benchmarks
from xr_nemo.eval.benchmark import REGISTRY, Benchmark, EvalItem

SUITES = (text_benchmarks, image_benchmarks, toy_benchmarks)  # imported for their registrations
__all__ = ["REGISTRY", "SUITES", "Benchmark", "EvalItem", "get_benchmark"]


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown benchmark {name!r}",
            where="--benchmarks",
            fix=f"choose from {', '.join(sorted(REGISTRY))}",
        )
    return REGISTRY[name]()
