"""Checkpoint verification against loading, at the Qwen2.5-VL-7B shapes, side by side in one run.

Verification is what a resume, `xr-nemo convert export` and an in-job load do around their read:
every file's size against the manifest first, then every file's XXH3-128 digest, taken by a thread
while the checkpoint is read (`xr_nemo/conversion/dist_checkpoint.py:verified_while_reading`), the
verdict before anything read is used. It is set against the reads it wraps:

- `read`: every parameter of the full 7B-shape checkpoint assembled by `DistCheckpointReader` (what
  `convert export` reads, one tensor at a time);
- `load`: a model of the 7B widths with `--layers` decoder layers (and `--vision-depth` vision blocks)
  built in memory and loaded whole by megatron-core's `dist_checkpointing.load` (what training's initial
  load and GRPO's reference do; a resume loads the same way, with the optimizer state beside it).

Each read is timed alone and wrapped in verification; verification is also timed alone (one process,
`verify_checkpoint`). Both checkpoints are random bf16 torch_dist checkpoints written by
`write_dist_checkpoint` (with their manifests). Each is timed cold (pages evicted with
posix_fadvise(DONTNEED) before each step) and warm (files in the page cache, as right after a save or
a previous read). Needs ~20 GB of disk in --workdir and ~8 GB of memory for the default whole-model load.

    python benchmarks/checkpoint_verify.py --workdir /tmp/verify-bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from xr_nemo.conversion.dist_checkpoint import (
    DistCheckpointReader,
    checkpoint_layout,
    parameter_names,
    verified_while_reading,
    verify_checkpoint,
    write_dist_checkpoint,
)
from xr_nemo.io.manifest import HASH
from xr_nemo.models.qwen25_vl.published import qwen25_vl_7b_config


def shaped_config(layers: int | None, vision_depth: int | None):
    """The published 7B config, with fewer decoder layers / vision blocks when asked."""
    config = qwen25_vl_7b_config()
    if layers is not None:
        config.text_config.num_hidden_layers = layers
    if vision_depth is not None:
        config.vision_config.depth = vision_depth
        config.vision_config.fullatt_block_indexes = [vision_depth - 1]
    return config


def write_random(out: Path, config) -> float:
    """A random bf16 checkpoint of `config`'s shapes (manifest included); returns its seconds."""
    generator = torch.Generator().manual_seed(0)

    def produce(name: str, shapes: dict[str, torch.Size]) -> torch.Tensor:
        return torch.empty(shapes[name], dtype=torch.bfloat16).uniform_(-0.5, 0.5, generator=generator)

    start = time.perf_counter()
    with checkpoint_layout(config, torch.bfloat16) as layout:
        shapes = {name: layout[name].data.shape for name in parameter_names(layout)}
        out.mkdir(parents=True)
        write_dist_checkpoint(out, layout, lambda name: produce(name, shapes))
    return time.perf_counter() - start


def size_of(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def evict(directory: Path) -> None:
    """Drop the directory's pages from the page cache (no root needed: clean pages of our files)."""
    for path in directory.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


Wrap = Callable[[], AbstractContextManager]


def read_every_parameter(checkpoint: Path, config, wrap: Wrap) -> float:
    """Seconds to read every parameter of the checkpoint, inside `wrap`."""
    with checkpoint_layout(config, torch.bfloat16) as layout:
        reader = DistCheckpointReader(checkpoint, layout)
        start = time.perf_counter()
        with wrap():
            for name in reader.names():
                reader.read(name)
        return time.perf_counter() - start


def load_whole_model(checkpoint: Path, config, wrap: Wrap) -> float:
    """Seconds of megatron-core's load of the whole model, inside `wrap` (the model is built first,
    not timed)."""
    from megatron.core import dist_checkpointing

    from xr_nemo.config.parallel import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    initialize(ParallelConfig())
    try:
        model = Qwen25VLModel(config, params_dtype=torch.bfloat16)
        wanted = model.sharded_state_dict()
        start = time.perf_counter()
        with wrap():
            state = dist_checkpointing.load(wanted, str(checkpoint))
            model.load_state_dict({key: value for key, value in state.items() if key in wanted})
        return time.perf_counter() - start
    finally:
        shutdown()


def compare(label: str, checkpoint: Path, load: Callable[[Wrap], float]) -> list[tuple[str, ...]]:
    """Per page cache state: verification alone, the read alone, and the read with verification
    beside it (what xr-nemo runs); the cost of verification is the last minus the read alone."""
    gigabytes = size_of(checkpoint) / 1e9

    def verifying() -> AbstractContextManager:
        return verified_while_reading(checkpoint)

    def measure(cold: bool) -> tuple[float, float, float]:
        prepare = (lambda: evict(checkpoint)) if cold else (lambda: verify_checkpoint(checkpoint))
        prepare()
        verify = timed(lambda: verify_checkpoint(checkpoint))
        prepare()
        alone = load(nullcontext)
        prepare()
        verified = load(verifying)
        return verify, alone, verified

    rows = []
    for cache in ("cold", "warm"):
        verify, alone, verified = measure(cache == "cold")
        added = verified - alone
        rows.append(
            (
                label,
                f"{gigabytes:.2f}",
                cache,
                f"{verify:.2f} s ({gigabytes / verify:.1f} GB/s)",
                f"{alone:.2f} s ({gigabytes / alone:.2f} GB/s)",
                f"{verified:.2f} s",
                f"{added:+.2f} s ({added / alone:+.2f})",
            )
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the whole-model load")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision blocks of the whole-model load")
    parser.add_argument("--skip-full", action="store_true", help="only the whole-model load")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        if not args.skip_full:
            full, config = args.workdir / "full", shaped_config(None, None)
            shutil.rmtree(full, ignore_errors=True)
            seconds = write_random(full, config)
            print(f"wrote the 7B-shape checkpoint ({size_of(full) / 1e9:.2f} GB) in {seconds:.0f} s")
            rows += compare(
                "7B, every tensor read", full, lambda wrap: read_every_parameter(full, config, wrap)
            )
            if not args.keep:
                shutil.rmtree(full)
        small = args.workdir / "whole-model"
        config = shaped_config(args.layers, args.vision_depth)
        shutil.rmtree(small, ignore_errors=True)
        write_random(small, config)
        label = f"7B widths, {args.layers} layers + {args.vision_depth} vision blocks, loaded whole"
        rows += compare(label, small, lambda wrap: load_whole_model(small, config, wrap))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir / "whole-model", ignore_errors=True)
    print(f"\nverification: sizes, then {HASH} digests of every file, one process")
    print("| checkpoint | GB | page cache | verify alone | read alone | read, verified alongside | added |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
