"""The benchmark registry: every benchmark of the text and image suites, by name."""

from __future__ import annotations

from xr_nemo.errors import ConfigError
from xr_nemo.tasks import image_benchmarks, text_benchmarks, toy_benchmarks
from xr_nemo.tasks.benchmark import REGISTRY, Benchmark, EvalItem

READERS = (text_benchmarks, image_benchmarks, toy_benchmarks)  # imported for their registrations
__all__ = ["READERS", "REGISTRY", "SUITES", "Benchmark", "EvalItem", "get_benchmark", "suite"]

SUITES: dict[str, tuple[str, ...]] = {
    "paper": (  # the X-Reasoner paper's evaluation suite
        "gsm8k", "mmlu_pro", "mmlu_pro_health", "mmmu", "mmmu_health", "mmmu_pro", "mmmu_pro_health",
        "mmstar", "mathvista", "mathvision", "medqa", "medqa_5op", "medxpertqa_mm", "omnimedvqa", "nejm",
    ),
    "medical": (  # X-Reasoner-Med's text and multimodal medical benchmarks (Fig. 4), and more
        "medqa", "medqa_5op", "medmcqa", "pubmedqa", "mmlu_pro_health", "medxpertqa_text",
        "mmmu_health", "mmmu_pro_health", "medxpertqa_mm", "nejm", "vqa_rad", "slake", "pmc_vqa",
        "omnimedvqa",
    ),
    "multimodal": ("mmmu", "mmmu_pro", "mmstar", "mathvista", "mathvision"),
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown benchmark {name!r}",
            where="--benchmarks",
            fix=f"choose from {', '.join(sorted(REGISTRY))}",
        )
    return REGISTRY[name]()


def suite(name: str) -> list[str]:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}", where="--suite", fix=f"choose from {', '.join(SUITES)}")
    return list(SUITES[name])
