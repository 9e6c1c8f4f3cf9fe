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
    return DistributedContext(launch, backend, device, data_parallel_size)


def shutdown() -> None:
    """Destroy megatron-core's groups and the process group; safe to call when nothing is up."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
