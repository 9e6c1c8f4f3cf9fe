"""Which layers the language model is built from (megatron-core's local torch layers or Transformer
Engine's), in what precision and with what activation recompute: resolved from `model.*` and checked
against this machine once, when the model is built, so that a choice the machine cannot run fails
with what to do instead of deep inside Transformer Engine."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xr_nemo.config.schema import CPCommType, FP8Recipe, ModelConfig, Recompute, TransformerImpl
from xr_nemo.errors import ConfigError
from xr_nemo.models import te_probe
from xr_nemo.models.specs import spec_settings


@dataclass(frozen=True)
class FP8Support:
    """What one FP8 recipe needs of the machine, as Transformer Engine checks it when it runs."""

    min_capability: tuple[int, int]
    gpus: str
    below_capability: tuple[int, int] | None = None  # the first compute capability TE refuses it on
    min_cuda: tuple[int, int] | None = None  # of the CUDA that torch (and TE) were built for


FP8_SUPPORT: dict[FP8Recipe, FP8Support] = {
    FP8Recipe.delayed: FP8Support((8, 9), "Ada, Hopper and newer"),
    FP8Recipe.tensorwise: FP8Support((8, 9), "Ada, Hopper and newer"),
    FP8Recipe.blockwise: FP8Support((9, 0), "Hopper and newer", min_cuda=(12, 9)),
    # TE has no MXFP8 GEMMs for the 12.x Blackwells (RTX 50xx, RTX PRO) yet
    FP8Recipe.mxfp8: FP8Support(
        (10, 0), "data-centre Blackwell: B200, GB200, B300", below_capability=(12, 0)
    ),
}
INSTALL_TE = "make setup-gpu on a CUDA machine (README: GPU clusters)"
REINSTALL_TE = "reinstall Transformer Engine for this torch and CUDA (docs/troubleshooting.md)"


def why_not_transformer_engine() -> str | None:
    """Why Transformer Engine layers cannot run here, or None when they can."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("CUDA is not available")
    te = te_probe.probe()
    if te.origin is None:
        reasons.append("transformer_engine is not installed")
    elif te.error is not None:
        reasons.append(f"transformer_engine is installed ({te.origin}) but does not import: {te.error}")
    return "; ".join(reasons) or None


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
        if reason and te_probe.probe().broken:
            _warn_once(
                f"model.transformer_impl=auto builds the local layers: {reason}. To use TE, "
                f"{REINSTALL_TE}; set model.transformer_impl=local to build them without this warning"
            )
        return TransformerImpl.local if reason else TransformerImpl.transformer_engine
    if choice == TransformerImpl.transformer_engine and reason:
        raise ConfigError(
            f"model.transformer_impl=transformer_engine, but {reason}",
            where="model.transformer_impl",
            fix=f"{_te_fix()}, or set model.transformer_impl=local (or auto)",
        )
    return choice


def _te_fix() -> str:
    return REINSTALL_TE if te_probe.probe().broken else INSTALL_TE


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Once per process, on rank 0 only when ranks exist: every rank resolves the same settings."""
    if message in _warned or (dist.is_initialized() and dist.get_rank() != 0):
        return
    _warned.add(message)
    warnings.warn(message, stacklevel=4)  # at the caller of resolve_layer_settings


def _check_fp8(impl: TransformerImpl, recipe: FP8Recipe, asked: TransformerImpl) -> None:
    if impl != TransformerImpl.transformer_engine:
        reason = why_not_transformer_engine() or f"model.transformer_impl={asked}"
        raise ConfigError(
            f"model.fp8 needs Transformer Engine layers, and these are local: {reason}",
            where="model.fp8",
            fix=f"{_te_fix()} with model.transformer_impl=auto or transformer_engine, or set model.fp8=null",
        )
    needs = FP8_SUPPORT[recipe]
    have = torch.cuda.get_device_capability()
    if not _runs_on(needs, have):
        low, high = needs.min_capability, needs.below_capability
        span = f"{low[0]}.{low[1]} or newer" + (f", below {high[0]}.{high[1]}" if high else "")
        raise ConfigError(
            f"model.fp8_recipe={recipe} needs a GPU of compute capability {span} ({needs.gpus}); "
            f"{torch.cuda.get_device_name()} is {have[0]}.{have[1]}",
            where="model.fp8_recipe",
            fix=_fp8_fix(have),
        )
    if not _cuda_runs(needs):
        raise ConfigError(
            f"model.fp8_recipe={recipe} needs CUDA {needs.min_cuda[0]}.{needs.min_cuda[1]} or newer; this "
            f"torch is built for CUDA {torch.version.cuda}",
            where="model.fp8_recipe",
            fix=f"install a torch (and TE) built for CUDA ≥ {needs.min_cuda[0]}.{needs.min_cuda[1]}, "
            f"or {_fp8_fix(have)}",
        )


def _runs_on(needs: FP8Support, have: tuple[int, int]) -> bool:
    return have >= needs.min_capability and (needs.below_capability is None or have < needs.below_capability)


def _cuda_runs(needs: FP8Support) -> bool:
    """Whether the CUDA torch was built for is new enough; a build without CUDA (ROCm) is left to TE."""
    if needs.min_cuda is None or not torch.version.cuda:
        return True
    major, minor = torch.version.cuda.split(".")[:2]
    return (int(major), int(minor)) >= needs.min_cuda


def _fp8_fix(have: tuple[int, int]) -> str:
    usable = [
        str(recipe) for recipe, needs in FP8_SUPPORT.items() if _runs_on(needs, have) and _cuda_runs(needs)
    ]
    if usable:
        return f"choose model.fp8_recipe from {', '.join(usable)}, or set model.fp8=null"
    return "set model.fp8=null (bf16) on this GPU"
