"""Where a training launch starts: `trainer.resume` read against the run directory, the chosen
checkpoint's files verified first (its manifest), a damaged one skipped and set aside, and never a
silent start from step 0 in a run that has checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from xr_nemo.config.schema import TrainingConfig
from xr_nemo.conversion.dist_checkpoint import verify_collectively
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


def resume_point(config: TrainingConfig, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint `trainer.resume` asks to continue from, its files verified; None to start at step
    0. Collective: the ranks share the reading.

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
        return _newest_intact(run_dir, say)
    checkpoint = resolve_checkpoint(resume, where="trainer.resume")
    try:
        _verify(checkpoint, say)
    except DamagedError as error:
        raise DamagedError(
            f"{checkpoint} is damaged: {error.what}",
            file=error.file,
            fix="restore the file from a copy, or resume from another checkpoint (trainer.resume=auto "
            "takes the newest intact one of the run)",
        ) from None
    return checkpoint


def _verify(checkpoint: Path, say: Callable[[str], None]) -> None:
    if verify_collectively(checkpoint) is None:
        say(f"{checkpoint} has no manifest (written by an earlier version): its files are not verified")


def _newest_intact(run_dir: Path, say: Callable[[str], None]) -> Path | None:
    """`trainer.resume=auto`'s choice (see `resume_point`)."""
    candidates = checkpoint_candidates(run_dir)
    named = latest_pointer(run_dir)
    pointer = checkpoints_dir(run_dir) / LATEST
    if not candidates:
        if named is None:
            return None  # a new run
        raise ConfigError(
            f"{pointer} names {named.name}, which does not exist, and the run has no other checkpoint",
            where=str(pointer),
            fix="restore the checkpoint, or start over: trainer.resume=restart (or a new run.dir)",
        )
    if named is None:
        say(f"{pointer} is missing: looking for the newest checkpoint in {pointer.parent}")
    elif named != candidates[0]:
        say(f"{pointer} names {named.name}, which does not exist: looking for the newest checkpoint")
    damaged: list[tuple[Path, DamagedError]] = []
    for candidate in candidates:
        try:
            _verify(candidate, say)
        except DamagedError as error:
            say(f"{candidate.name} is damaged, skipped: {error.what} — {error.file}")
            damaged.append((candidate, error))
            continue
        if damaged and dist.get_rank() == 0:
            for checkpoint, _ in damaged:
                say(f"{checkpoint.name} set aside as {set_aside(checkpoint).name} (kept for inspection)")
            point_latest_at(candidate)
        dist.barrier()
        if damaged:
            say(f"resuming from {candidate.name}, the newest intact checkpoint")
        return candidate
    listed = "; ".join(f"{checkpoint.name}: {error.what}" for checkpoint, error in damaged)
    raise DamagedError(
        f"none of the {len(damaged)} checkpoint(s) of {run_dir} is intact, so the run cannot resume — "
        f"{listed}",
        file=damaged[0][1].file,
        fix="restore the damaged files from a copy; or train again from step 0 with trainer.resume=restart "
        "(it replaces these checkpoints as it reaches their steps), or use a new run.dir",
    )
