"""megatron-core `dist_checkpointing` (torch_dist) checkpoints, streamed one tensor at a time.

The checkpoint layout is megatron-core's own: the sharded state dict of the model built on the meta
device at TP=1/PP=1 (stacked layer axes, TE-compatible norm keys, gate/up halves). torch_dist stores
global shapes, so the checkpoint loads at any tensor/pipeline-parallel layout. Writing goes through
PyTorch Distributed Checkpoint with a planner that builds each chunk when the writer asks for it (one
file per chunk); reading loads one parameter at a time through megatron-core's loader.

Every checkpoint written here or by training carries a manifest (`xr_nemo/io/manifest.py`: each file's
size and digest, the stored tensors' shapes); `verified_while_reading` checks it as the checkpoint is
read (sizes before, digests alongside, the verdict before anything read is used), and
`check_model_shapes` names the first tensor that a model built from another config would not fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.core import CheckpointingConfig, maybe_load_config, save_config
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import (
    ShardedStateDict,
    ShardedTensor,
    ShardedTensorFactory,
    apply_factories,
)
from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
    CachedMetadataFileSystemReader,
)
from megatron.core.dist_checkpointing.strategies.torch import (
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter, TensorStorageMetadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import LoadPlan, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from transformers import PretrainedConfig

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.distributed import initialize, shutdown
from xr_nemo.errors import XrNemoError
from xr_nemo.io.manifest import (
    DamagedError,
    check_digests,
    check_sizes,
    describe,
    listed_files,
    read_manifest,
    shares,
    write_manifest,
)

COMMON_STATE_FILE = "common.pt"
CHECKPOINT_CONFIG = "metadata.json"  # megatron-core's: written last by its save
TORCH_DIST_METADATA = ".metadata"  # PyTorch Distributed Checkpoint's index of every stored chunk
# Not in a manifest: the HF side files (`convert.HF_FILES_DIR`), beside which an export may write its
# weights. A side file that does not match the tensors is caught by the shape checks.
UNLISTED = ("hf",)

ProduceParam = Callable[[str], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class _ChunkSource:
    """Where one stored chunk comes from: a view (on the meta device) into a full parameter."""

    param: str
    param_shape: torch.Size
    view: torch.Tensor


@contextmanager
def checkpoint_layout(hf_config: PretrainedConfig, dtype: torch.dtype) -> Iterator[ShardedStateDict]:
    """The model's sharded state dict at TP=1/PP=1, on the meta device (no memory), keyed by parameter
    name. Starts a one-process group for megatron-core's parallel state when none is running."""
    from xr_nemo.models.registry import family_of

    build_model = family_of(hf_config).build_model
    owns_group = not torch.distributed.is_initialized()
    if owns_group:
        initialize(ParallelConfig())
    elif torch.distributed.get_world_size() != 1:
        raise XrNemoError(
            "checkpoint conversion runs in one process",
            where=f"rank {torch.distributed.get_rank()} of {torch.distributed.get_world_size()}",
            fix="run `xr-nemo convert` outside torchrun/srun with more than one task",
        )
    try:
        with torch.device("meta"):
            model = build_model(hf_config, params_dtype=dtype)
        yield model.sharded_state_dict()
    finally:
        if owns_group:
            shutdown()


class _ProducingSavePlanner(DefaultSavePlanner):
    """Plans from meta tensors; builds each chunk's data only when it is written, and keeps a produced
    parameter only until all of its chunks are written."""

    def __init__(
        self, sources: dict[tuple[str, tuple[int, ...]], _ChunkSource], produce: ProduceParam
    ) -> None:
        super().__init__()
        self._sources = sources
        self._produce = produce
        self._chunks_left: dict[str, int] = {}
        for source in sources.values():
            self._chunks_left[source.param] = self._chunks_left.get(source.param, 0) + 1
        self._produced: dict[str, torch.Tensor] = {}

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return self.lookup_object(write_item.index)  # already serialized, as megatron-core does
        source = self._sources[(write_item.index.fqn, tuple(write_item.index.offset))]
        name, view = source.param, source.view
        if name not in self._produced:
            full = self._produce(name)
            if full.shape != source.param_shape or full.dtype != view.dtype:
                raise XrNemoError(
                    f"produced {list(full.shape)} {full.dtype}, "
                    f"the model has {list(source.param_shape)} {view.dtype}",
                    where=f"parameter {name}",
                    fix="the weights do not match the model config",
                )
            self._produced[name] = full
        full = self._produced[name]
        chunk = full.as_strided(view.shape, view.stride(), view.storage_offset())
        self._chunks_left[name] -= 1
        if not self._chunks_left[name]:
            del self._produced[name]
        return chunk.reshape(write_item.tensor_data.chunk.sizes)


def _expand_chunks(layout: ShardedStateDict) -> dict[str, tuple[torch.Size, list[ShardedTensor]]]:
    """Parameter name → (full shape, the stored chunks it is made of; views into it). Applies the layout's
    factories in place (gate/up halves become two chunks)."""
    shapes = {name: entry.data.shape for name, entry in layout.items() if _is_tensor(entry)}
    apply_factories(layout)
    chunks = {}
    for name, shape in shapes.items():
        entry = layout[name]
        chunks[name] = (shape, entry if isinstance(entry, list) else [entry])
    return chunks


def write_dist_checkpoint(out_dir: Path, layout: ShardedStateDict, produce: ProduceParam) -> None:
    """Write a torch_dist checkpoint in `layout` (from `checkpoint_layout`), calling `produce(name)` for
    each full parameter (TP=1 layout, the model's dtype)."""
    sources = {
        (chunk.key, tuple(chunk.global_offset)): _ChunkSource(name, shape, chunk.data)
        for name, (shape, chunks) in _expand_chunks(layout).items()
        for chunk in chunks
    }
    grouped, _, _ = _replace_state_dict_keys_with_sharded_keys(layout)
    state = mcore_to_pyt_state_dict(grouped, is_loading=False)
    # one file per chunk: in one file per rank, torch keeps every written tensor until the file closes.
    # No fsync per file: the output directory is flushed once, before it is renamed into place.
    writer = FileSystemWriter(out_dir, single_file_per_rank=False, thread_count=1, sync_files=False)
    with _original_errors():
        dcp.save(state, storage_writer=writer, planner=_ProducingSavePlanner(sources, produce), no_dist=True)
    torch.save({}, out_dir / COMMON_STATE_FILE)
    save_config(CheckpointingConfig(sharded_backend="torch_dist"), str(out_dir))
    record_manifest(out_dir, describe(out_dir, listed_files(out_dir, skip=UNLISTED)))


@contextmanager
def _original_errors() -> Iterator[None]:
    """PyTorch Distributed Checkpoint wraps every failure; re-raise the one that happened."""
    try:
        yield
    except CheckpointException as error:
        failures = [failure[0] for failure in error.failures.values()]
        if len(failures) == 1 and isinstance(failures[0], Exception):
            raise failures[0] from None
        raise


def _is_tensor(entry: object) -> bool:
    return isinstance(entry, ShardedTensor | ShardedTensorFactory)


def parameter_names(layout: ShardedStateDict) -> list[str]:
    """The tensors of a layout (not the `_extra_state` objects beside them)."""
    return [name for name, entry in layout.items() if _is_tensor(entry)]


class DistCheckpointReader:
    """Full parameters (TP=1 layout) of a torch_dist checkpoint, one at a time, whatever layout wrote it."""

    def __init__(self, checkpoint_dir: str | Path, layout: ShardedStateDict) -> None:
        self.dir = Path(checkpoint_dir)
        config = maybe_load_config(str(self.dir))
        if config is None or config.sharded_backend != "torch_dist":
            raise XrNemoError(
                "not a megatron-core torch_dist checkpoint (no metadata.json naming torch_dist)",
                where=str(self.dir),
                fix="pass a directory written by `xr-nemo convert import` or by training",
            )
        self._reader = CachedMetadataFileSystemReader(str(self.dir))
        metadata = self._reader.read_metadata().state_dict_metadata
        self.stored = {key: meta for key, meta in metadata.items() if isinstance(meta, TensorStorageMetadata)}
        self._chunks = _expand_chunks(layout)
        missing = sorted({c.key for _, chunks in self._chunks.values() for c in chunks} - set(self.stored))
        if missing:
            raise XrNemoError(
                f"{len(missing)} model tensor(s) are missing from the checkpoint, e.g. {missing[:3]}",
                where=str(self.dir),
                fix="the checkpoint was written for another model config; pass its config (--hf-files)",
            )
        self._check_shapes()

    def _check_shapes(self) -> None:
        """A config that differs from the writer's in a size (heads, layers, widths) gives the same keys
        with other global shapes; say so by name instead of failing inside the reader."""
        mismatched = sorted(
            {
                (chunk.key, tuple(chunk.global_shape), tuple(self.stored[chunk.key].size))
                for _, chunks in self._chunks.values()
                for chunk in chunks
                if tuple(chunk.global_shape) != tuple(self.stored[chunk.key].size)
            }
        )
        if mismatched:
            key, expected, stored = mismatched[0]
            raise XrNemoError(
                f"{len(mismatched)} tensor(s) have other shapes in the checkpoint than the model config "
                f"gives, e.g. {key}: stored {list(stored)}, the config makes {list(expected)}",
                where=str(self.dir),
                fix="the checkpoint was written for another model config; pass its config (--hf-files)",
            )

    def names(self) -> list[str]:
        return list(self._chunks)

    def read(self, name: str) -> torch.Tensor:
        """Assemble one parameter from whatever chunks (layers, TP shards) the checkpoint stores."""
        shape, chunks = self._chunks[name]
        full = torch.empty(shape, dtype=self.stored[chunks[0].key].properties.dtype)
        regions = {}
        for chunk in chunks:
            region = full.as_strided(chunk.data.shape, chunk.data.stride(), chunk.data.storage_offset())
            regions[(chunk.key, tuple(chunk.global_offset))] = region.view(
                (1,) * chunk.prepend_axis_num + tuple(region.shape)
            )
        planner = _RegionLoadPlanner(regions, self.stored)
        with _original_errors():
            dcp.load({}, storage_reader=self._reader, planner=planner, no_dist=True)
        return full


class _RegionLoadPlanner(DefaultLoadPlanner):
    """Reads given regions of stored tensors (not whole tensors) into given destination tensors."""

    def __init__(
        self,
        regions: dict[tuple[str, tuple[int, ...]], torch.Tensor],
        stored: dict[str, TensorStorageMetadata],
    ) -> None:
        super().__init__()
        self._regions = regions
        self._stored = stored

    def create_local_plan(self) -> LoadPlan:
        items = []
        for (key, offset), destination in self._regions.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=destination.shape)
            items += create_read_items_for_chunk_list(key, self._stored[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self._regions[(index.fqn, tuple(index.offset))]


def load_model_weights(model: torch.nn.Module, checkpoint_dir: str | Path) -> None:
    """Load a model's weights from a torch_dist checkpoint (imported or written by training) at the
    model's own parallel layout, once its shapes fit the model, its files verified as they load
    (`verified_while_reading`: nothing loaded is used unless every byte is as written). Collective when
    a process group runs (each rank verifies a share of the files)."""
    checkpoint = Path(checkpoint_dir)
    wanted = model.sharded_state_dict()
    with verified_while_reading(checkpoint) as manifest:
        check_model_shapes(
            model.sharded_state_dict(),
            stored_shapes(checkpoint, manifest),
            checkpoint,
            fix="build the model the checkpoint was written for (model.hf_dir: its hf/config.json), or "
            "load a checkpoint of this model",
        )
        with load_errors(checkpoint):
            state = dist_checkpointing.load(wanted, str(checkpoint))
    # a training checkpoint also holds common state (optimizer, train_state): take the model's keys
    model.load_state_dict({key: value for key, value in state.items() if key in wanted})


def record_manifest(checkpoint: Path, files: dict[str, dict], **facts: object) -> Path:
    """The checkpoint's manifest: `files` (from `describe`, every file but the manifest), the global
    shape of every stored tensor, and `facts` (the layout that wrote it, the model's sizes)."""
    return write_manifest(checkpoint, files, tensors=_shapes_in_metadata(checkpoint), **facts)


def _read_metadata(checkpoint: Path):
    path = checkpoint / TORCH_DIST_METADATA
    try:
        return FileSystemReader(str(checkpoint)).read_metadata()
    except Exception as error:  # an unpickling error of any kind: the bytes are not a metadata file
        cause = failure_cause(error)
        raise DamagedError(f"{TORCH_DIST_METADATA} does not read: {cause}", file=path) from None


def _shapes_in_metadata(checkpoint: Path) -> dict[str, list[int]]:
    metadata = _read_metadata(checkpoint).state_dict_metadata
    return {key: list(meta.size) for key, meta in metadata.items() if isinstance(meta, TensorStorageMetadata)}


def stored_shapes(checkpoint: Path, manifest: dict | None) -> dict[str, list[int]]:
    """Global shape of every stored tensor: from the manifest, or the torch_dist metadata without one."""
    return manifest["tensors"] if manifest and "tensors" in manifest else _shapes_in_metadata(checkpoint)


def check_files(checkpoint: Path) -> dict | None:
    """The cheap half of verification, no file read: refuse (`DamagedError`, naming the file) a
    checkpoint that is half-written, or one of whose listed files is missing or has another size.
    Returns the manifest; None for a checkpoint written before manifests, of which only the structure
    is checked (every file its metadata stores tensors in exists and is long enough)."""
    for name, when in (
        (TORCH_DIST_METADATA, "once every rank has written its files"),
        (CHECKPOINT_CONFIG, "last"),
    ):
        if not (checkpoint / name).is_file():
            raise DamagedError(
                f"{name} is missing: the checkpoint is half-written ({name} is written {when})",
                file=checkpoint / name,
            )
    manifest = read_manifest(checkpoint)
    if manifest is None:
        _check_structure(checkpoint)
    else:
        check_sizes(checkpoint, manifest)
    return manifest


def _own_share(manifest: dict, share: tuple[int, int]) -> list[str]:
    part, parts = share
    return shares({name: entry["size"] for name, entry in manifest["files"].items()}, parts)[part]


def verify_checkpoint(checkpoint: Path, share: tuple[int, int] = (0, 1)) -> dict | None:
    """`check_files`, then the digests of the files of `share` (this process's part, of `parts`): every
    byte as it was written. Returns the manifest (None without one: its bytes cannot be checked)."""
    manifest = check_files(checkpoint)
    if manifest is not None:
        check_digests(checkpoint, manifest, _own_share(manifest, share))
    return manifest


def _check_structure(checkpoint: Path) -> None:
    ends: dict[str, int] = {}
    for info in _read_metadata(checkpoint).storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = checkpoint / name
        if not path.is_file():
            raise DamagedError(f"{name} is missing ({TORCH_DIST_METADATA} stores tensors in it)", file=path)
        if path.stat().st_size < end:
            raise DamagedError(
                f"{name} has {path.stat().st_size} bytes, {TORCH_DIST_METADATA} reads up to byte {end} "
                "(truncated)",
                file=path,
            )
    if not (checkpoint / COMMON_STATE_FILE).is_file():
        raise DamagedError(f"{COMMON_STATE_FILE} is missing", file=checkpoint / COMMON_STATE_FILE)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def agree_on_damage(failure: DamagedError | None) -> None:
    """Every rank raises the same error, for the first damaged file any rank found. Collective."""
    found = [(str(failure.file), failure.what)] if failure is not None else []
    if _rank_and_world()[1] > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, found[0] if found else None)
        found = sorted(entry for entry in gathered if entry is not None)
    if found:
        file, what = found[0]
        raise DamagedError(what, file=Path(file))


@contextmanager
def verified_while_reading(checkpoint: Path) -> Iterator[dict | None]:
    """Verification overlapped with the caller's read of the checkpoint (a load, an export). The cheap
    half (`check_files`) runs first; the digests of this rank's share are taken by a thread while the
    block reads, so a cold read of the files is not paid twice (each read finds the pages the other
    brought in). On leaving the block every rank raises the same `DamagedError` if any file differs —
    before whatever the block loaded is used. A block that failed is explained by the damage when a
    file is damaged. Collective when a process group runs."""
    manifest = check_files(checkpoint)
    if manifest is None:
        yield None
        return
    names = _own_share(manifest, _rank_and_world())
    with ThreadPoolExecutor(1, thread_name_prefix="xr-nemo-verify") as pool:
        digests = pool.submit(check_digests, checkpoint, manifest, names)
        try:
            yield manifest
        except BaseException:
            damage = digests.exception()
            if isinstance(damage, DamagedError):
                raise damage from None
            raise
        damage = digests.exception()
    if damage is not None and not isinstance(damage, DamagedError):
        raise damage
    agree_on_damage(damage)


def check_model_shapes(
    wanted: ShardedStateDict, stored: dict[str, list[int]], checkpoint: Path, fix: str
) -> None:
    """Every tensor of the model (`wanted`: its sharded state dict, consumed here) is stored with the
    model's global shape; the first that is not, in the model's order, is named."""
    apply_factories(wanted)
    problems = []
    for entry in nested_values(wanted):
        if not isinstance(entry, ShardedTensor):
            continue
        expected = list(entry.global_shape)
        if entry.key not in stored:
            problems.append(f"{entry.key} is not in the checkpoint (the model has it, shape {expected})")
        elif list(stored[entry.key]) != expected:
            problems.append(f"{entry.key} is stored as {list(stored[entry.key])}, this model's is {expected}")
    if problems:
        more = f" ({len(problems) - 1} more tensors differ)" if len(problems) > 1 else ""
        raise XrNemoError(
            f"the checkpoint was written for another model shape: {problems[0]}{more}",
            where=str(checkpoint),
            fix=fix,
        )


def failure_cause(error: BaseException) -> str:
    """The innermost cause of an error, in one line: through PyTorch Distributed Checkpoint's per-rank
    wrapping and megatron-core's re-raising, whose own messages hold tracebacks."""
    while True:
        if isinstance(error, CheckpointException) and error.failures:
            error = next(iter(error.failures.values()))[0]
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            break
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    line = lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


@contextmanager
def load_errors(checkpoint: Path, fix: str | None = None) -> Iterator[None]:
    """megatron-core's loader fails with long internal messages (every missing key, each rank's
    traceback); say which checkpoint it was and the cause, in one line."""
    try:
        yield
    except XrNemoError:
        raise
    except (Exception, CheckpointException) as error:
        raise XrNemoError(
            f"cannot load {checkpoint}: {failure_cause(error)}",
            where=str(checkpoint),
            fix=fix
            or "check that it was written for this model and layout (its xr_nemo_manifest.json "
            "records both); rerun with --debug for the full traceback",
        ) from error
