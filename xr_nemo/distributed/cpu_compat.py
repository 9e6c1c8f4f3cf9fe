"""Let megatron-core 0.16.1 run on CPU processes joined by gloo.

megatron-core calls CUDA unconditionally in a few modules: `torch.cuda.current_device()` for tensor
placement, `torch.cuda.synchronize()` around pipeline sends, `torch.zeros(..., device="cuda")` for
token counters, the CUDA RNG state for its model-parallel RNG tracker, and its optimizers accept only
parameters whose `Tensor.type()` names a CUDA type. On a machine without CUDA,
`apply()` gives exactly those modules a `torch` whose CUDA entry points act on the CPU, and points the
tracker's RNG-state helpers at the CPU generator, and makes `Tensor.type()` report CUDA type names
only while the functions in `CUDA_TYPE_CHECKS` run, and `Tensor.cuda()` a no-op while those in
`CUDA_MOVES` run. Nothing changes for any other module, and nothing at all when CUDA is present.
`PATCHED_MODULES` is the list a megatron-core upgrade must be checked against (with
`CUDA_TYPE_CHECKS` and `CUDA_MOVES`); the tests fail if a listed name moves or no longer needs
patching.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch

PATCHED_MODULES = (
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.transformer.module",
    "megatron.core.transformer.utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.utils",
)

# (module, qualified name) of the functions that test `param.type() == "torch.cuda.FloatTensor"`.
CUDA_TYPE_CHECKS = (
    ("megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer.__init__"),
    ("megatron.core.optimizer.optimizer", "Float16OptimizerWithFloat16Params.__init__"),
    ("megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32"),
    ("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32"),
)

# (module, qualified name) of the functions that move tensors with `tensor.cuda()`.
CUDA_MOVES = (
    (
        "megatron.core.models.common.language_module.language_module",
        "LanguageModule.setup_embeddings_and_output_layer",
    ),
)

_FACTORIES = (
    "zeros",
    "ones",
    "empty",
    "full",
    "tensor",
    "arange",
    "randn",
    "rand",
    "zeros_like",
    "empty_like",
)

_applied = False
# The device megatron-core's "cuda" means in the patched modules. The device-placement tests set "meta",
# so that a host tensor meeting one of megatron-core's tensors fails as it would on a GPU.
cuda_stands_for = "cpu"


def _on_cpu(device: Any) -> Any:
    if device is None:
        return None
    text = str(device)
    return cuda_stands_for if text == "cuda" or text.startswith("cuda:") else device


class _CudaOnCpu:
    """`torch.cuda` for the patched modules: placement, synchronisation and RNG act on the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> str:
        return cuda_stands_for

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def get_rng_state(device: Any = "cuda") -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
        torch.set_rng_state(new_state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        # torch.manual_seed would recurse into torch.cuda.manual_seed_all.
        torch.default_generator.manual_seed(seed)


class _TorchOnCpu:
    """`torch` for the patched modules: `cuda` is `_CudaOnCpu`, factories map device "cuda" to CPU."""

    cuda = _CudaOnCpu()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(torch, name)
        if name in _FACTORIES:

            def factory(*args: Any, **kwargs: Any) -> torch.Tensor:
                if "device" in kwargs:
                    kwargs["device"] = _on_cpu(kwargs["device"])
                return attribute(*args, **kwargs)

            return factory
        return attribute


def _get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


_FLOAT_TYPES = ("FloatTensor", "HalfTensor", "BFloat16Tensor")
_tensor_type = torch.Tensor.type


def _type_with_cuda_names(self: torch.Tensor, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
    """`torch.FloatTensor` (or `torch.meta.FloatTensor`, …) named `torch.cuda.FloatTensor`."""
    if dtype is None and not args and not kwargs:
        name = _tensor_type(self)
        kind = name.rsplit(".", 1)[-1]
        return f"torch.cuda.{kind}" if kind in _FLOAT_TYPES else name
    return _tensor_type(self, dtype, *args, **kwargs)


def _stay_on_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self


def _while_running(method: str, replacement: Callable) -> Callable[[Callable], Callable]:
    """A decorator running functions with `torch.Tensor.<method>` replaced (re-entrant, shared depth)."""
    original = getattr(torch.Tensor, method)
    depth = 0

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal depth
            depth += 1
            setattr(torch.Tensor, method, replacement)
            try:
                return fn(*args, **kwargs)
            finally:
                depth -= 1
                if depth == 0:
                    setattr(torch.Tensor, method, original)

        return wrapper

    return decorate


def resolve(module_name: str, qualified_name: str) -> tuple[Any, str]:
    """The object holding the last part of `qualified_name` in `module_name`, and that part."""
    owner: Any = importlib.import_module(module_name)
    *path, attribute = qualified_name.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attribute


def apply() -> None:
    """Install the CPU stand-ins into megatron-core's modules. Idempotent; no-op when CUDA exists."""
    global _applied
    if _applied or torch.cuda.is_available():
        return
    torch_on_cpu = _TorchOnCpu()
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        module.torch = torch_on_cpu
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = _get_rng_state
    random._set_cuda_rng_state = _set_rng_state
    for functions, method, replacement in (
        (CUDA_TYPE_CHECKS, "type", _type_with_cuda_names),
        (CUDA_MOVES, "cuda", _stay_on_cpu),
    ):
        decorate = _while_running(method, replacement)
        for module_name, qualified_name in functions:
            owner, attribute = resolve(module_name, qualified_name)
            setattr(owner, attribute, decorate(getattr(owner, attribute)))
    _applied = True
