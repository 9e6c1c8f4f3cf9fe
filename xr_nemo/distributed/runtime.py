"""Bring up torch.distributed and megatron-core's parallel state for one job, and tear them down."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.distributed import cpu_compat
from xr_nemo.distributed.devices import use_device
from xr_nemo.distributed.launch_env import LaunchEnv, read_launch_env
from xr_nemo.errors import LaunchError


@dataclass(frozen=True)
class DistributedContext:
    launch: LaunchEnv
    backend: str
    device: torch.device
    data_parallel_size: int


def initialize(parallel: ParallelConfig, seed: int = 1234, timeout_minutes: float = 30) -> DistributedContext:
    """Initialise the process group (NCCL on GPU, gloo on CPU) and megatron-core's parallel groups.

    Works under torchrun, Slurm srun, or as a single process. Seeds the model-parallel RNG tracker:
    the same `seed` everywhere, offset by tensor-parallel rank as megatron-core does.
    """
    launch = read_launch_env()
    data_parallel_size = parallel.data_parallel_size(launch.world_size)
    if torch.cuda.is_available():
        backend = "nccl"
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        backend = "gloo"
        device = torch.device("cpu")
        cpu_compat.apply()
    use_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=datetime.timedelta(minutes=timeout_minutes),
            )
        except (RuntimeError, ValueError) as exc:
            raise LaunchError(
                f"could not join the process group at {launch.master_addr}:{launch.master_port}: {exc}",
                where=f"rank {launch.rank} of {launch.world_size} ({launch.launcher})",
                fix="check that every rank sees the same MASTER_ADDR/MASTER_PORT and that the port is free",
            ) from exc
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        context_parallel_size=parallel.context_parallel,
    )
    model_parallel_cuda_manual_seed(seed)
    _create_replica_groups()
    return DistributedContext(launch, backend, device, data_parallel_size)


_replica_group: dist.ProcessGroup | None = None


def _create_replica_groups() -> None:
    """One group per data-parallel replica: its tensor-, context- and pipeline-parallel ranks.
    megatron-core's model-parallel group leaves out the context-parallel ranks."""
    global _replica_group
    if parallel_state.get_context_parallel_world_size() == 1:
        _replica_group = parallel_state.get_model_parallel_group()
        return
    replica_of_rank: list[int] = [0] * dist.get_world_size()
    dist.all_gather_object(replica_of_rank, parallel_state.get_data_parallel_rank())
    for replica in sorted(set(replica_of_rank)):
        group = dist.new_group([rank for rank, r in enumerate(replica_of_rank) if r == replica])
        if replica == parallel_state.get_data_parallel_rank():
            _replica_group = group


def replica_group() -> dist.ProcessGroup:
    """The ranks of this data-parallel replica, which hold one whole copy of the model between them."""
    if _replica_group is None:
        raise RuntimeError("xr_nemo.distributed.initialize() has not been called")
    return _replica_group


def shutdown() -> None:
    """Destroy megatron-core's groups and the process group; safe to call when nothing is up."""
    global _replica_group
    _replica_group = None
    use_device(None)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
