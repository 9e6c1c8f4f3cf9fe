"""Distributed runtime: launcher environment, process groups, megatron-core parallel state."""

from xr_nemo.distributed.launch_env import LaunchEnv, expand_nodelist, read_launch_env
from xr_nemo.distributed.runtime import DistributedContext, initialize, replica_group, shutdown

__all__ = [
    "DistributedContext",
    "LaunchEnv",
    "expand_nodelist",
    "initialize",
    "read_launch_env",
    "replica_group",
    "shutdown",
]
