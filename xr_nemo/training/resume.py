"""Where a training launch starts: `trainer.resume` read against the run directory, the chosen
checkpoint's files checked against its manifest (structure and sizes first, every byte while it
loads), a damaged one skipped and set aside, and never a silent start from step 0 in a run that has
checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.optimizer import MegatronOptimizer

from xr_nemo.config.schema import TrainingConfig
from xr_nemo.conversion.dist_checkpoint import agree_on_damage, check_files, verified_while_reading
from xr_nemo.errors import ConfigError
from xr_nemo.io.manifest import DamagedError
from xr_nemo.run_dir import (
    LATEST,
    checkpoint_candidates,
    checkpoints_dir,
    has_checkpoints,
    latest_pointer,
    point_latest_at,
    resolve_checkpoint,
    set_aside,
)
from xr_nemo.training.checkpoint import load_checkpoint

Damage = tuple[Path, DamagedError]


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    passed_over: tuple[Damage, ...] = ()  # newer checkpoints found damaged: set aside once this one loads


def resume_point(config: TrainingConfig, say: Callable[[str], None] = print) -> ResumePoint | None:
    """The checkpoint `trainer.resume` asks to continue from, its files present with their sizes (its
    bytes are verified as it loads: `load_resume_point`); None to start at step 0. Collective.

    - `auto`: the newest intact checkpoint of `run.dir` — the one `latest` names, else the highest
      `step_N` (the pointer missing or stale). A damaged one is skipped, said, and set aside as
      `step_N.damaged` (so training never overwrites or prunes it); when the run has checkpoints but
      none is intact, the launch stops: it never starts over silently.
    - `never` / `restart`: step 0; `never` refuses a run directory that has checkpoints, `restart`
      asks for exactly that (they are replaced as training reaches their steps).
    - a path (checkpoint or run directory): that checkpoint; a damaged one is an error.
    """
    resume, run_dir = config.trainer.resume, Path(config.run.dir)
    if resume in ("never", "restart"):
        if has_checkpoints(run_dir) and resume == "never":
            raise ConfigError(
                f"{run_dir} already has checkpoints and trainer.resume=never",
                where="run.dir",
                fix="use a new run.dir, trainer.resume=auto to continue, or trainer.resume=restart to "
                "train again from step 0 (replacing them)",
            )
        if has_checkpoints(run_dir):
            say(
                "trainer.resume=restart: starting at step 0; this run's checkpoints are replaced as "
                "training reaches their steps"
            )
        return None
    if resume == "auto":
        return _newest_intact(run_dir, say, ())
    checkpoint = resolve_checkpoint(resume, where="trainer.resume")
    try:
        _check(checkpoint, say)
    except DamagedError as error:
        raise _named_damaged(checkpoint, error) from None
    return ResumePoint(checkpoint)


def load_resume_point(
    config: TrainingConfig,
    point: ResumePoint,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Load `point` (`resume_point`'s choice) into model and optimizer, its digests taken while it
    loads (`verified_while_reading`: a cold read is paid once); returns the checkpoint loaded and its
    training state. Under `trainer.resume=auto` a checkpoint whose bytes turn out damaged is passed
    over for the newest intact one before it, as `resume_point` passes over one whose files are
    missing or cut; the damaged ones are set aside once one has loaded. Collective."""
    while True:
        try:
            with verified_while_reading(point.checkpoint):
                state = load_checkpoint(point.checkpoint, model, optimizer)
            break
        except DamagedError as error:
            if config.trainer.resume != "auto":
                raise _named_damaged(point.checkpoint, error) from None
            say(f"{point.checkpoint.name} is damaged, skipped: {error.what} — {error.file}")
            point = _newest_intact(Path(config.run.dir), say, (*point.passed_over, (point.checkpoint, error)))
    if point.passed_over:
        if dist.get_rank() == 0:
            for checkpoint, _ in point.passed_over:
                say(f"{checkpoint.name} set aside as {set_aside(checkpoint).name} (kept for inspection)")
            point_latest_at(point.checkpoint)
        dist.barrier()
        say(f"resuming from {point.checkpoint.name}, the newest intact checkpoint")
    return point.checkpoint, state


def _named_damaged(checkpoint: Path, error: DamagedError) -> DamagedError:
    return DamagedError(
        f"{checkpoint} is damaged: {error.what}",
        file=error.file,
        fix="restore the file from a copy, or resume from another checkpoint (trainer.resume=auto "
        "takes the newest intact one of the run)",
    )


def _check(checkpoint: Path, say: Callable[[str], None]) -> None:
    """The cheap half of verification (structure, sizes), agreed by every rank; the digests are taken
    while the checkpoint loads."""
    manifest, failure = None, None
    try:
        manifest = check_files(checkpoint)
    except DamagedError as error:
        failure = error
    agree_on_damage(failure)
    if manifest is None:
        say(f"{checkpoint} has no manifest (written by an earlier version): its files are not verified")


def _newest_intact(
    run_dir: Path, say: Callable[[str], None], damaged: tuple[Damage, ...]
) -> ResumePoint | None:
    """`trainer.resume=auto`'s choice (see `resume_point`), past the checkpoints already found
    `damaged`."""
    known = {checkpoint for checkpoint, _ in damaged}
    candidates = [candidate for candidate in checkpoint_candidates(run_dir) if candidate not in known]
    named = latest_pointer(run_dir)
    pointer = checkpoints_dir(run_dir) / LATEST
    if not candidates and not damaged:
        if named is None:
            return None  # a new run
        raise ConfigError(
            f"{pointer} names {named.name}, which does not exist, and the run has no other checkpoint",
            where=str(pointer),
            fix="restore the checkpoint, or start over: trainer.resume=restart (or a new run.dir)",
        )
    if not damaged and named is None:
        say(f"{pointer} is missing: looking for the newest checkpoint in {pointer.parent}")
    elif not damaged and named != candidates[0]:
        say(f"{pointer} names {named.name}, which does not exist: looking for the newest checkpoint")
    for candidate in candidates:
        try:
            _check(candidate, say)
        except DamagedError as error:
            say(f"{candidate.name} is damaged, skipped: {error.what} — {error.file}")
            damaged = (*damaged, (candidate, error))
            continue
        return ResumePoint(candidate, damaged)
    listed = "; ".join(f"{checkpoint.name}: {error.what}" for checkpoint, error in damaged)
    raise DamagedError(
        f"none of the {len(damaged)} checkpoint(s) of {run_dir} is intact, so the run cannot resume — "
        f"{listed}",
        file=damaged[0][1].file,
        fix="restore the damaged files from a copy; or train again from step 0 with trainer.resume=restart "
        "(it replaces these checkpoints as it reaches their steps), or use a new run.dir",
    )
