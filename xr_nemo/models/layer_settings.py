"""Which layers the language model is built from (megatron-core's local torch layers or Transformer
Engine's), in what precision and with what activation recompute: resolved from `model.*` and checked
against this machine once, when the model is built, so that a choice the machine cannot run fails
with what to do instead of deep inside Transformer Engine."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from xr_nemo.config.schema import CPCommType, FP8Recipe, ModelConfig, Recompute, TransformerImpl
from xr_nemo.errors import ConfigError
from xr_nemo.models.specs import spec_settings

# The GPU generation each FP8 recipe needs, as Transformer Engine requires it.
FP8_MIN_CAPABILITY: dict[FP8Recipe, tuple[tuple[int, int], str]] = {
    FP8Recipe.delayed: ((8, 9), "Ada or Hopper and newer"),
    FP8Recipe.tensorwise: ((8, 9), "Ada or Hopper and newer"),
    FP8Recipe.blockwise: ((9, 0), "Hopper and newer"),
    FP8Recipe.mxfp8: ((10, 0), "Blackwell"),
}
INSTALL_TE = "pip install -e '.[gpu]' on a CUDA machine"


@functools.cache
def transformer_engine_importable() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or its CUDA libraries failing to load
        return False
    return True


def why_not_transformer_engine() -> str | None:
    """Why Transformer Engine layers cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not transformer_engine_importable():
        return "transformer_engine does not import"
    return None


@dataclass(frozen=True)
class LayerSettings:
    """The resolved choice. The default is what runs anywhere: conversion and CPU runs build it."""

    impl: TransformerImpl = TransformerImpl.local
    fp8: str | None = None
    fp8_recipe: FP8Recipe = FP8Recipe.delayed
    recompute: Recompute = Recompute.none
    cp_comm_type: CPCommType = CPCommType.p2p

    def transformer_config_kwargs(self) -> dict[str, object]:
        """The TransformerConfig fields these settings set."""
        kwargs: dict[str, object] = {"transformer_impl": str(self.impl), **spec_settings(self.impl)}
        if self.impl == TransformerImpl.transformer_engine:
            kwargs["cp_comm_type"] = str(self.cp_comm_type)
        if self.recompute == Recompute.selective:
            kwargs["recompute_granularity"] = "selective"  # megatron-core's default module: core_attn
        elif self.recompute == Recompute.full:
            kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        if self.fp8:
            kwargs.update(fp8=self.fp8, fp8_recipe=str(self.fp8_recipe))
            if self.fp8_recipe == FP8Recipe.delayed:  # the scaling history NeMo's FP8 recipes use
                kwargs.update(fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
        return kwargs


def resolve_layer_settings(model: ModelConfig) -> LayerSettings:
    """`model.*` resolved for this machine (`auto` becomes an implementation); refuses what it cannot
    run: Transformer Engine without TE or CUDA, FP8 without TE or on a GPU too old for the recipe."""
    impl = _resolve_impl(TransformerImpl(model.transformer_impl))
    recipe = FP8Recipe(model.fp8_recipe)
    if model.fp8 is not None:
        _check_fp8(impl, recipe, TransformerImpl(model.transformer_impl))
    return LayerSettings(
        impl=impl,
        fp8=None if model.fp8 is None else str(model.fp8),
        fp8_recipe=recipe,
        recompute=Recompute(model.recompute),
        cp_comm_type=CPCommType(model.cp_comm_type),
    )


def _resolve_impl(choice: TransformerImpl) -> TransformerImpl:
    reason = why_not_transformer_engine()
    if choice == TransformerImpl.auto:
        return TransformerImpl.local if reason else TransformerImpl.transformer_engine
    if choice == TransformerImpl.transformer_engine and reason:
        raise ConfigError(
            f"model.transformer_impl=transformer_engine, but {reason}",
            where="model.transformer_impl",
            fix=f"{INSTALL_TE}, or set model.transformer_impl=local (or auto)",
        )
    return choice


def _check_fp8(impl: TransformerImpl, recipe: FP8Recipe, asked: TransformerImpl) -> None:
    if impl != TransformerImpl.transformer_engine:
        reason = why_not_transformer_engine() or f"model.transformer_impl={asked}"
        raise ConfigError(
            f"model.fp8 needs Transformer Engine layers, and these are local: {reason}",
            where="model.fp8",
            fix=f"{INSTALL_TE} with model.transformer_impl=auto or transformer_engine, or set model.fp8=null",
        )
    needed, generation = FP8_MIN_CAPABILITY[recipe]
    have = torch.cuda.get_device_capability()
    if have < needed:
        raise ConfigError(
            f"model.fp8_recipe={recipe} needs a GPU of compute capability {needed[0]}.{needed[1]} or newer "
            f"({generation}); {torch.cuda.get_device_name()} is {have[0]}.{have[1]}",
            where="model.fp8_recipe",
            fix=_fp8_fix(have),
        )


def _fp8_fix(have: tuple[int, int]) -> str:
    usable = [str(recipe) for recipe, (needed, _) in FP8_MIN_CAPABILITY.items() if have >= needed]
    if usable:
        return f"choose model.fp8_recipe from {', '.join(usable)}, or set model.fp8=null"
    return "set model.fp8=null (bf16) on this GPU"
