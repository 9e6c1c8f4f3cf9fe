"""Training checkpoints: megatron-core `dist_checkpointing` (torch_dist, reshardable), written atomically.

Layout of `<run.dir>/checkpoints/`: `step_N/` (written as `step_N.tmp/`, renamed when complete), and
`latest` (the name of the newest complete one, replaced last). A checkpoint holds the model's tensors at
the top level (so `xr-nemo convert export` reads it as it is), the optimizer under `optimizer`, the
training state (`train_state`, common) and every rank's RNG states, plus the HF side files in `hf/`,
and — written last — its manifest (`xr_nemo_manifest.json`: every file's size and digest, the stored
tensors' shapes, the parallel layout and the model's sizes), which a resume checks before loading.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.utils import extract_sharded_base
from megatron.core.optimizer import DistributedOptimizer, MegatronOptimizer
from torch.distributed.checkpoint.api import CheckpointException

from xr_nemo.conversion.dist_checkpoint import (
    COMMON_STATE_FILE,
    UNLISTED,
    check_model_shapes,
    failure_cause,
    load_errors,
    record_manifest,
    stored_shapes,
)
from xr_nemo.conversion.hf_checkpoint import copy_side_files
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.io import atomic_dir
from xr_nemo.io.atomic_dir import move_into_place, write_text_atomically
from xr_nemo.io.manifest import describe, listed_files, read_manifest, shares
from xr_nemo.run_dir import LATEST, checkpoint_dir, checkpoints_dir, side_files, step_checkpoints
from xr_nemo.training.optimizer import load_optimizer_state, optimizer_state_to_load, optimizer_state_to_save

TRAIN_STATE = "train_state"
OPTIMIZER = "optimizer"
RNG = "rng_state"
# The layout keys a checkpoint's optimizer state depends on: the distributed optimizer stores it per
# tensor- and pipeline-parallel shard (megatron-core's `dp_reshardable`), which reshards only along
# data-parallel ranks. Data- and context-parallel sizes may change between launches.
FIXED_LAYOUT = ("tensor_parallel", "pipeline_parallel", "distributed_optimizer")
MODEL_FACTS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)
T = TypeVar("T")


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


def parallel_layout(optimizer: MegatronOptimizer) -> dict[str, Any]:
    """This launch's parallel layout, as a checkpoint records it."""
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    return {
        "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_parallel": parallel_state.get_pipeline_model_parallel_world_size(),
        "context_parallel": parallel_state.get_context_parallel_world_size(),
        "data_parallel": parallel_state.get_data_parallel_world_size(),
        "world_size": dist.get_world_size(),
        "distributed_optimizer": any(isinstance(inner, DistributedOptimizer) for inner in inners),
    }


def model_facts(hf_dir: Path) -> dict[str, Any]:
    """The model's sizes, from its config.json: what a shape mismatch is explained with."""
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    facts = {key: text[key] for key in MODEL_FACTS if key in text}
    return {"architectures": config.get("architectures"), **facts}


class _WriteFailed(Exception):
    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _on_every_rank(step: Callable[[], T]) -> list[T]:
    """Run `step` here and gather every rank's result. When it failed on any rank, every rank raises
    (`_WriteFailed`, with the first failing rank's cause): none is left waiting at a later collective."""
    error: BaseException | None = None
    try:
        result = step()
    except (Exception, CheckpointException) as caught:
        result, error = None, caught
    outcomes: list = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, (result, None if error is None else failure_cause(error)))
    failed = [(rank, cause) for rank, (_, cause) in enumerate(outcomes) if cause is not None]
    if failed:
        rank, cause = failed[0]
        raise _WriteFailed(f"rank {rank}: {cause}" if len(outcomes) > 1 else cause) from error
    return [result for result, _ in outcomes]


def _try_common_write(staging: Path, state: dict) -> None:
    """Write, then remove, as many bytes as megatron-core's common state (what no rank shards) will
    take. Its save writes that file on rank 0 alone before the collective writes start: failing there
    (a disk already full), rank 0 would leave the save while the other ranks wait in it. Failing here,
    every rank learns it (`_on_every_rank`)."""
    buffer = io.BytesIO()
    torch.save(extract_sharded_base(state)[1], buffer)
    probe = staging / f".{COMMON_STATE_FILE}.probe"
    try:
        with probe.open("wb") as stream:
            stream.write(buffer.getbuffer())
            stream.flush()
            os.fsync(stream.fileno())
    finally:
        probe.unlink(missing_ok=True)


def _side_files_and_sizes(staging: Path, hf_dir: Path) -> dict[str, int]:
    copy_side_files(hf_dir, side_files(staging))
    return {name: (staging / name).stat().st_size for name in listed_files(staging, skip=UNLISTED)}


def _write_checkpoint(staging: Path, state: dict, hf_dir: Path, facts: dict[str, Any]) -> None:
    """The checkpoint's files, then its manifest: each rank digests a share of the files (the ones it
    likely still has in its page cache), rank 0 writes the manifest. Collective."""
    rank, world = dist.get_rank(), dist.get_world_size()
    _on_every_rank(lambda: _try_common_write(staging, state) if rank == 0 else None)
    _on_every_rank(lambda: dist_checkpointing.save(state, str(staging)))
    sizes = _on_every_rank(lambda: _side_files_and_sizes(staging, hf_dir) if rank == 0 else None)[0]
    described = _on_every_rank(lambda: describe(staging, shares(sizes, world)[rank]))
    files = {name: entry for part in described for name, entry in part.items()}
    _on_every_rank(lambda: record_manifest(staging, files, **facts) if rank == 0 else None)


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _write_error(root: Path, final: Path, cause: str, state: dict) -> XrNemoError:
    """Why a checkpoint could not be written, with what it needs against what the file system offers."""
    previous = [path for path in step_checkpoints(root.parent) if path != final]
    if previous:
        needed, basis = _size(previous[0]), f"the size of {previous[0].name}"
    else:
        local = sum(
            entry.data.numel() * entry.data.element_size()
            for entry in nested_values(state)
            if isinstance(entry, ShardedTensor) and entry.data is not None
        )
        needed, basis = local * dist.get_world_size(), "this rank's tensors × the number of ranks"
    free = shutil.disk_usage(root).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    facts = f"it needs about {_bytes(needed)} ({basis}); {_bytes(free)} are free on {root}"
    if limit != resource.RLIM_INFINITY:
        facts += f", and no file may exceed {_bytes(limit)} (the file-size limit, `ulimit -f`)"
    restart = f"; relaunch with trainer.resume=auto to continue from {previous[0].name}" if previous else ""
    return XrNemoError(
        f"could not write checkpoint {final.name} ({cause}): {facts}",
        where=str(final),
        fix=f"free space on that file system, keep fewer checkpoints (checkpoint.keep_last), or move "
        f"run.dir to a larger one; nothing of {final.name} was left behind and the earlier checkpoints "
        f"are intact{restart}",
    )


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    train_state: dict[str, Any],
    hf_dir: str | Path,
    keep_last: int | None,
) -> Path:
    """Collective: every rank calls it. Returns the final directory. A write that fails on any rank (a
    full disk, a file-size limit) leaves no `step_N` or `step_N.tmp` behind, and every rank raises."""
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
    facts = {"layout": parallel_layout(optimizer), "model": model_facts(Path(hf_dir))}
    try:
        _write_checkpoint(staging, state, Path(hf_dir), facts)
    except _WriteFailed as failed:
        if dist.get_rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
        _barrier()
        raise _write_error(root, final, failed.cause, state) from failed
    if dist.get_rank() == 0:
        move_into_place(staging, final)  # re-saving a step swaps, never leaving it half-written
        write_text_atomically(root / LATEST, final.name + "\n")
        _prune(root, keep_last, newest=final)
        remove_interrupted_writes(root)
    _barrier()
    return final


def remove_interrupted_writes(root: Path) -> None:
    """Delete what saves killed mid-write left in `root`: their staging directories (`step_N.tmp`) and
    the hidden files and directories of `atomic_dir`'s writes (the `latest` pointer's temporary file, a
    replaced checkpoint set aside). Only the run holding the run directory's lock writes here, so none
    of them belongs to a live write."""
    for staging in root.glob("step_*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)
    atomic_dir.remove_interrupted_writes(root)


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
    with load_errors(Path(checkpoint)):
        common = dist_checkpointing.load_common_state_dict(str(checkpoint))
    return dict(common[TRAIN_STATE])


def _describe_layout(layout: dict[str, Any]) -> str:
    optimizer = "distributed optimizer" if layout.get("distributed_optimizer") else "plain optimizer"
    return (
        f"tensor_parallel={layout.get('tensor_parallel')}, pipeline_parallel="
        f"{layout.get('pipeline_parallel')}, {optimizer}"
    )


def check_layout(saved: dict[str, Any], now: dict[str, Any], checkpoint: Path) -> None:
    """Refuse, before loading, a launch whose tensor/pipeline-parallel layout or optimizer differs from
    the one that wrote the checkpoint: its optimizer state would not load (see `FIXED_LAYOUT`)."""
    if all(saved.get(key) == now[key] for key in FIXED_LAYOUT):
        return
    distributed = str(bool(saved.get("distributed_optimizer"))).lower()
    raise ConfigError(
        f"{checkpoint.name} was written at {_describe_layout(saved)}; this launch runs at "
        f"{_describe_layout(now)}. The optimizer state is resumed at the tensor- and pipeline-parallel "
        "layout that wrote it (data- and context-parallel sizes may change)",
        where=f"parallel.* (the checkpoint's layout: {checkpoint / 'xr_nemo_manifest.json'})",
        fix=f"relaunch with parallel.tp={saved.get('tensor_parallel')} parallel.pp="
        f"{saved.get('pipeline_parallel')} parallel.use_distributed_optimizer={distributed}; or, to "
        f"go on at the new layout, start a new run.dir from its weights with model.checkpoint="
        f"{checkpoint} (the optimizer state, schedule and data order start over)",
    )


def _check_fits(checkpoint: Path, model: torch.nn.Module, optimizer: MegatronOptimizer) -> None:
    """The model's shapes and the launch's layout against the checkpoint's, before anything loads."""
    manifest = read_manifest(checkpoint)
    written_for = ""
    if manifest and manifest.get("model"):
        sizes = ", ".join(f"{k}={v}" for k, v in manifest["model"].items() if k in MODEL_FACTS)
        written_for = f" ({sizes})"
    check_model_shapes(
        model.sharded_state_dict(),
        stored_shapes(checkpoint, manifest),
        checkpoint,
        fix=f"relaunch with the model the run was trained with{written_for}: model.hf_dir={checkpoint}/hf; "
        "or train this model in a new run.dir",
    )
    if manifest and "layout" in manifest:
        check_layout(manifest["layout"], parallel_layout(optimizer), checkpoint)


def load_checkpoint(
    checkpoint: str | Path, model: torch.nn.Module, optimizer: MegatronOptimizer
) -> dict[str, Any]:
    """Collective. Restores model, optimizer and (at the same world size) RNG states; returns the
    training state. Its bytes are verified as it loads (`training.resume.load_resume_point`); the model's
    shapes and the tensor/pipeline-parallel layout must match the checkpoint's, or the launch is
    refused before anything loads. Data- and context-parallel sizes may differ; RNG states then start
    fresh."""
    checkpoint = Path(checkpoint)
    _check_fits(checkpoint, model, optimizer)
    train_state = read_train_state(checkpoint)
    same_world = train_state.get("world_size") == dist.get_world_size()
    state = model.sharded_state_dict()
    state[OPTIMIZER] = optimizer_state_to_load(optimizer, state)
    if same_world:
        state[RNG] = _rng_entry(_rng_state())
    with load_errors(checkpoint):
        loaded = dist_checkpointing.load(state, str(checkpoint))
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
