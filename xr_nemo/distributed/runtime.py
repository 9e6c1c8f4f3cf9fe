"""Bring up torch.distributed and megatron-core's parallel state for one job, and tear them down."""

from __future__ import annotations

import datetime
import json
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from xr_nemo.config.parallel import ParallelConfig
from xr_nemo.distributed import cpu_compat
from xr_nemo.distributed.devices import use_device
from xr_nemo.distributed.launch_env import (
    RENDEZVOUS_TIMEOUT_VARIABLE,
    LaunchEnv,
    agent_serves_store,
    launch_attempt,
    read_launch_env,
    rendezvous_timeout_s,
)
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
            collective_timeout = datetime.timedelta(minutes=timeout_minutes)
            dist.init_process_group(
                backend=backend,
                store=_rendezvous(launch, rendezvous_timeout_s(), collective_timeout),
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=collective_timeout,
            )
        except LaunchError:
            use_device(None)
            raise
        except (RuntimeError, ValueError) as exc:
            use_device(None)
            raise LaunchError(
                f"could not join the process group at {launch.master_addr}:{launch.master_port}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
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


_RENDEZVOUS = "xr_nemo/rendezvous"


def _rendezvous(launch: LaunchEnv, timeout_s: float, collective_timeout: datetime.timedelta) -> dist.Store:
    """The job's TCP store, once every process has arrived: rank 0 serves it and waits at most
    `timeout_s` for the others, then tells them all whether the job is complete. (torch's own `tcp://`
    rendezvous waits as long as a collective may — 30 minutes — and says nothing.) The others first wait,
    quietly, for the store to listen. Under torchrun's agent store every rank connects to the agent's."""
    address = f"{launch.master_addr}:{launch.master_port}"
    where = (
        f"rank {launch.rank} of {launch.world_size} ({launch.launcher}), MASTER_ADDR:MASTER_PORT = {address}"
    )
    fix = (
        f"start all {launch.world_size} processes of the job (torchrun --nnodes/--nproc-per-node, srun -n), "
        f"check that every node reaches {address}, or give them longer: "
        f"{RENDEZVOUS_TIMEOUT_VARIABLE}=SECONDS (now {timeout_s:g})"
    )
    deadline = time.monotonic() + timeout_s
    arrived_key, verdict_key = (f"{_RENDEZVOUS}/{launch_attempt()}/{name}" for name in ("arrived", "verdict"))
    serves = launch.rank == 0 and not agent_serves_store()
    if not serves and not _reachable(launch.master_addr, launch.master_port, deadline):
        raise LaunchError(
            f"nothing answered at {address}, where the job's store is served, within {timeout_s:g} s",
            where=where,
            fix=fix,
        )
    store = dist.TCPStore(
        launch.master_addr,
        launch.master_port,
        launch.world_size,
        is_master=serves,
        timeout=datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0)),
        wait_for_workers=False,
        multi_tenant=True,
    )
    if launch.rank == 0:
        missing = _wait_for_ranks(store, arrived_key, launch.world_size, deadline)
        store.set(verdict_key, json.dumps(missing))
    else:
        store.set(f"{arrived_key}/{launch.rank}", socket.gethostname())
        store.add(arrived_key, 1)
        store.set_timeout(datetime.timedelta(seconds=timeout_s))  # rank 0 answers within its own deadline
        try:
            store.wait([verdict_key])
        except dist.DistError as exc:
            raise LaunchError(
                f"rank 0 at {address} did not confirm the job within {timeout_s:g} s", where=where, fix=fix
            ) from exc
        missing = json.loads(store.get(verdict_key))
    if missing:
        arrived = launch.world_size - len(missing)
        raise LaunchError(
            f"{len(missing)} of the job's {launch.world_size} processes did not arrive within "
            f"{timeout_s:g} s (rank(s) {_ranges(missing)} missing, {arrived} arrived, rank 0 included)",
            where=where,
            fix=fix,
        )
    store.set_timeout(collective_timeout)
    return store


def _reachable(host: str, port: int, deadline: float) -> bool:
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _wait_for_ranks(store: dist.Store, arrived_key: str, world_size: int, deadline: float) -> list[int]:
    """Rank 0: the ranks still missing at `deadline` (none once all have arrived)."""
    while store.add(arrived_key, 0) < world_size - 1:
        if time.monotonic() > deadline:
            return [rank for rank in range(1, world_size) if not store.check([f"{arrived_key}/{rank}"])]
        time.sleep(0.1)
    return []


def _ranges(ranks: list[int]) -> str:
    """`[1, 2, 3, 7]` → `1-3, 7`."""
    parts, start = [], None
    for index, rank in enumerate(ranks):
        start = rank if start is None else start
        if index + 1 == len(ranks) or ranks[index + 1] != rank + 1:
            parts.append(f"{start}" if start == rank else f"{start}-{rank}")
            start = None
    return ", ".join(parts)


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
