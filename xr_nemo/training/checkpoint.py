"""Training checkpoints: megatron-core `dist_checkpointing` (torch_dist, reshardable), written atomically.

Layout of `<run.dir>/checkpoints/`: `step_N/` (written as `step_N.tmp/`, renamed when complete), and
`latest` (the name of the newest complete one, replaced last). A checkpoint holds the model's tensors at
the top level (so `xr-nemo convert export` reads it as it is), the optimizer under `optimizer`, the
training state (`train_state`, common) and every rank's RNG states, plus the HF side files in `hf/`.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer import MegatronOptimizer

from xr_nemo.conversion.hf_checkpoint import copy_side_files
from xr_nemo.io.atomic_dir import move_into_place, write_text_atomically
from xr_nemo.run_dir import LATEST, checkpoint_dir, checkpoints_dir, side_files
from xr_nemo.training.optimizer import load_optimizer_state, optimizer_state_to_load, optimizer_state_to_save

TRAIN_STATE = "train_state"
OPTIMIZER = "optimizer"
RNG = "rng_state"


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state(), "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_entry(data: Any) -> ShardedObject:
    rank, world = dist.get_rank(), dist.get_world_size()
    return ShardedObject(RNG, data, (world,), (rank,), replica_id=0)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    train_state: dict[str, Any],
    hf_dir: str | Path,
    keep_last: int | None,
) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root, final = checkpoints_dir(run_dir), checkpoint_dir(run_dir, step)
    staging = final.with_name(f"{final.name}.tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted save
        staging.mkdir(parents=True)
    _barrier()
    state = model.sharded_state_dict()
    state[OPTIMIZER] = optimizer_state_to_save(optimizer, state)
    state[TRAIN_STATE] = {**train_state, "world_size": dist.get_world_size()}
    state[RNG] = _rng_entry(_rng_state())
    dist_checkpointing.save(state, str(staging))
    _barrier()
    if dist.get_rank() == 0:
        copy_side_files(Path(hf_dir), side_files(staging))
        move_into_place(staging, final)  # re-saving a step swaps, never leaving it half-written
        write_text_atomically(root / LATEST, final.name + "\n")
        _prune(root, keep_last, newest=final)
    _barrier()
    return final


def _prune(root: Path, keep_last: int | None, newest: Path) -> None:
    """Removes all but the `keep_last` newest checkpoints; never the one just written (`latest`)."""
    if keep_last is None:
        return
    steps = sorted(
        (int(p.name.removeprefix("step_")), p) for p in root.glob("step_*") if p.name[5:].isdigit()
    )
    for _, path in steps[: max(0, len(steps) - keep_last)]:
        if path != newest:
            shutil.rmtree(path)


def read_train_state(checkpoint: str | Path) -> dict[str, Any]:
    common = dist_checkpointing.load_common_state_dict(str(checkpoint))
    return dict(common[TRAIN_STATE])


def load_checkpoint(
    checkpoint: str | Path, model: torch.nn.Module, optimizer: MegatronOptimizer
) -> dict[str, Any]:
    """Collective. Restores model, optimizer and (at the same world size) RNG states; returns the
    training state. A checkpoint from another layout loads too (torch_dist reshards); RNG states then
    start fresh."""
    checkpoint = str(checkpoint)
    train_state = read_train_state(checkpoint)
    same_world = train_state.get("world_size") == dist.get_world_size()
    state = model.sharded_state_dict()
    state[OPTIMIZER] = optimizer_state_to_load(optimizer, state)
    if same_world:
        state[RNG] = _rng_entry(_rng_state())
    loaded = dist_checkpointing.load(state, checkpoint)
    rng = loaded.pop(RNG, None)
    optimizer_state = loaded.pop(OPTIMIZER)
    loaded.pop(TRAIN_STATE, None)
    model.load_state_dict(loaded)
    load_optimizer_state(optimizer, optimizer_state)
    if rng is not None:
        _set_rng_state(rng)
    else:
        warnings.warn(
            f"{checkpoint} was written by {train_state.get('world_size')} ranks, this run has "
            f"{dist.get_world_size()}: RNG states start fresh",
            stacklevel=2,
        )
    return train_state
