"""What every training stage does before its loop: the run directory, the model directory, the policy
(initial weights or the checkpoint to resume, wrapped in megatron-core DDP with its optimizer), and the
HF export at the end."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.transformer import MegatronModule
from transformers import AutoConfig, PretrainedConfig

from xr_nemo.config.schema import ExportConfig, ModelConfig, Synthetic, TrainingConfig
from xr_nemo.conversion.convert import DTYPES, export_hf, import_hf
from xr_nemo.conversion.dist_checkpoint import load_model_weights
from xr_nemo.distributed.devices import compute_device
from xr_nemo.distributed.isolated import run_isolated
from xr_nemo.errors import ConfigError, LaunchError, XrNemoError
from xr_nemo.io.manifest import DamagedError
from xr_nemo.io.run_lock import lock_run_dir
from xr_nemo.models.dtype import params_dtype
from xr_nemo.models.layer_settings import resolve_layer_settings
from xr_nemo.models.registry import DEFAULT_FAMILY, family_named, family_names, family_of
from xr_nemo.run_dir import (
    BASE_CHECKPOINT,
    EXPORT_DIR,
    checkpoint_dir,
    is_checkpoint,
    record_config,
    resolve_checkpoint,
    side_files,
)
from xr_nemo.training.loop import Policy
from xr_nemo.training.main_grad import accumulate_vocab_gradients_in_place
from xr_nemo.training.optimizer import build_optimizer
from xr_nemo.training.resume import resume_point

T = TypeVar("T")


def on_rank_zero_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """Rank 0 does the work (building caches, files); the others then reuse what it wrote."""
    result = fn(*args, **kwargs) if dist.get_rank() == 0 else None
    dist.barrier()
    return result if dist.get_rank() == 0 else fn(*args, **kwargs)


def model_dir(model: ModelConfig) -> Path:
    """The Hugging Face directory with config.json and tokenizer: `model.hf_dir`, or the checkpoint's."""
    if model.hf_dir:
        return Path(model.hf_dir)
    if not model.checkpoint:
        raise ConfigError(
            "no model given",
            where="model.hf_dir",
            fix="set model.hf_dir, or model.checkpoint / init.checkpoint",
        )
    return side_files(resolve_checkpoint(model.checkpoint, where="model.checkpoint"))


def _prepare_model_dir(model: ModelConfig) -> None:
    """Rank 0: build the synthetic model when asked and absent; check the directory otherwise."""
    hf_dir = model_dir(model)
    if (hf_dir / "config.json").exists():
        return
    if model.synthetic == Synthetic.tiny:
        family_named(DEFAULT_FAMILY).build_tiny(hf_dir, num_kv_heads=2)  # splits over 2 TP ranks
        return
    raise ConfigError(
        f"{hf_dir} has no config.json",
        where="model.hf_dir",
        fix="point it at a Hugging Face checkpoint directory of a supported family: "
        + ", ".join(family_names()),
    )


def prepare_run_dir(config: TrainingConfig, stage: str) -> Path:
    """Rank 0 creates the run directory, takes its lock (one launch writes a run directory; held until
    the stage ends), records the resolved config and prepares the model directory; returns the model
    directory, once every rank may read it. Collective: a failure on rank 0 is raised on every rank, so
    none waits for rank 0 in vain."""
    run_dir = Path(config.run.dir)
    outcome: list = [None]  # rank 0's error, sent to every rank: (kind, what, where, fix)
    if dist.get_rank() == 0:
        say = lambda message: print(f"[{stage}] {message}", flush=True)  # noqa: E731
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock_run_dir(run_dir, say)
            record_config(config, run_dir, say=say)
            _prepare_model_dir(config.model)
        except XrNemoError as error:
            outcome[0] = (type(error), error.what, error.where, error.fix)
        except BaseException as error:
            what = f"rank 0 failed preparing {run_dir}: {error!r}"
            outcome[0] = (LaunchError, what, None, "see rank 0's output")
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        kind, what, where, fix = outcome[0]
        raise kind(what, where=where, fix=fix)
    return model_dir(config.model)


def initial_checkpoint(model: ModelConfig, run_dir: Path, say: Callable[[str], None]) -> Path:
    """`model.checkpoint`, or the HF weights imported into the run directory once. Collective."""
    if model.checkpoint:
        return resolve_checkpoint(model.checkpoint, where="model.checkpoint")
    base = run_dir / BASE_CHECKPOINT
    if dist.get_rank() == 0 and not is_checkpoint(base):
        say(f"importing {model.hf_dir} → {base}")
        run_isolated(import_hf, model.hf_dir, base, overwrite=True, progress=False)
    dist.barrier()
    return base


def build_model(hf_config: PretrainedConfig, config: TrainingConfig) -> MegatronModule:
    """The model `config.model` asks for, built by the family of `hf_config`, with layers this machine
    can run (else a ConfigError), on this rank's GPU when there is one: megatron-core builds its layers
    there, the vision tower is built on the host."""
    model = config.model
    built = family_of(hf_config).build_model(
        hf_config,
        config.parallel,
        params_dtype=params_dtype(model.dtype),
        train_vision=model.train_vision,
        layers=resolve_layer_settings(model),
    )
    freeze(built, model.frozen)
    return built.to(compute_device())


def freeze(model: torch.nn.Module, patterns: list[str]) -> None:
    """Stop training the parameters `patterns` match; DDP and the optimizer then leave them out. A
    pattern that matches nothing is refused: it is a typo, not a choice."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(
                f"model.frozen pattern {pattern!r} matches no parameter",
                where="model.frozen",
                fix=f"patterns match names like {names[0]!r} ({len(names)} parameters on this rank)",
            )
    for name, parameter in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            parameter.requires_grad_(False)


def wrap_for_training(
    model: MegatronModule, config: TrainingConfig
) -> tuple[DistributedDataParallel, torch.optim.Optimizer]:
    """DDP and the optimizer. Losses are (sum, token count) pairs: megatron-core then divides gradients by
    the tokens of the whole global batch, and DDP must sum (not average) over data-parallel ranks — it
    reads `calculate_per_token_loss` when it is built, so the flag is set before. The vocabulary-sized
    weight gradients then go straight into DDP's buffer (`main_grad`)."""
    distributed_optimizer = config.parallel.use_distributed_optimizer
    model.config.calculate_per_token_loss = True
    model.config.finalize_model_grads_func = finalize_model_grads
    wrapped = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer
        ),
        module=model,
    )
    accumulate_vocab_gradients_in_place(model, wrapped.ddp_config)
    bf16 = params_dtype(config.model.dtype) == torch.bfloat16
    optimizer = build_optimizer([wrapped], config.optim, distributed_optimizer, bf16=bf16)
    return wrapped, optimizer


def build_policy(config: TrainingConfig, hf_dir: Path, say: Callable[[str], None]) -> Policy:
    """The model to train, seeded from the config: initial weights loaded unless a checkpoint will be
    resumed (the loop loads that), wrapped for training. Collective."""
    resume_from = resume_point(config, say)
    torch.manual_seed(config.trainer.seed)
    model = build_model(AutoConfig.from_pretrained(hf_dir), config)
    initial = initial_checkpoint(config.model, Path(config.run.dir), say)
    if resume_from is None:
        try:
            load_model_weights(model, initial)
        except DamagedError as error:
            imported = initial.name == BASE_CHECKPOINT and not config.model.checkpoint
            raise DamagedError(
                f"the checkpoint of the initial weights is damaged: {error.what}",
                file=error.file,
                fix=f"delete {initial}: it is imported again from model.hf_dir"
                if imported
                else "restore the file from a copy, or point model.checkpoint at another checkpoint",
            ) from None
    wrapped, optimizer = wrap_for_training(model, config)
    return Policy(model, wrapped, optimizer, hf_dir, initial, resume_from)


def export_final(run_dir: Path, last_step: int, export: ExportConfig, say: Callable[[str], None]) -> Path:
    """The last checkpoint's directory, exported to `<run_dir>/hf` by rank 0 when `export.hf`. Collective."""
    final = checkpoint_dir(run_dir, last_step)
    if export.hf and dist.get_rank() == 0:
        dtype = DTYPES[export.dtype] if export.dtype else None
        run_isolated(export_hf, final, run_dir / EXPORT_DIR, dtype=dtype, overwrite=True, progress=False)
        say(f"exported {final} → {run_dir / EXPORT_DIR}")
    dist.barrier()
    say(f"done: {final}")
    return final
