"""Process groups and megatron-core parallel state from a torchrun-like launch (2 CPU processes)."""

import pytest

from xr_nemo.distributed.local_launch import run_distributed


def layout_worker(tensor_parallel: int, pipeline_parallel: int) -> dict:
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state

    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.distributed.devices import compute_device

    context = initialize(ParallelConfig(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel))
    result = {
        "backend": context.backend,
        "device": str(compute_device()),
        "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rank": dist.get_rank(),
        "dp": (parallel_state.get_data_parallel_world_size(), context.data_parallel_size),
        "tp": (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_rank(),
        ),
        "pp": (
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_rank(),
        ),
    }
    shutdown()
    assert not dist.is_initialized()
    return result


def bad_layout_worker() -> str:
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize
    from xr_nemo.errors import ConfigError

    try:
        initialize(ParallelConfig(tensor_parallel=4))
    except ConfigError as error:
        return str(error)
    return "no error"


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)])
def test_parallel_state_matches_the_requested_layout(tp, pp):
    results = run_distributed(layout_worker, 2, tp, pp)
    for rank, result in enumerate(results):
        # CPU ranks joined by gloo, also on a machine with GPUs (the ranks see none)
        assert (result["backend"], result["device"], result["visible_gpus"]) == ("gloo", "cpu", "")
        assert result["rank"] == rank
        assert result["dp"] == (2 // (tp * pp),) * 2
        assert result["tp"] == (tp, rank if tp == 2 else 0)
        assert result["pp"] == (pp, rank if pp == 2 else 0)


def test_layout_that_does_not_divide_the_world_fails_before_any_group_is_made():
    messages = run_distributed(bad_layout_worker, 2)
    assert all("world size 2 is not divisible" in message for message in messages)


def replica_worker(context_parallel: int) -> tuple[int, list[int], list[int]]:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, replica_group, shutdown

    initialize(ParallelConfig(context_parallel=context_parallel))
    result = (
        parallel_state.get_data_parallel_rank(),
        sorted(dist.get_process_group_ranks(replica_group())),
        sorted(dist.get_process_group_ranks(parallel_state.get_data_parallel_group())),
    )
    shutdown()
    return result


def test_a_replica_group_holds_the_context_parallel_ranks_of_its_data_parallel_replica():
    """At CP=2 on 4 ranks (DP=2), each replica is the two CP ranks that share a data-parallel rank."""
    results = run_distributed(replica_worker, 4, 2)
    for rank, (dp_rank, replica, data_parallel) in enumerate(results):
        assert rank in replica and len(replica) == 2
        assert replica == [r for r, (other, _, _) in enumerate(results) if other == dp_rank]
        assert set(replica) & set(data_parallel) == {rank}  # one rank of each replica per DP group
