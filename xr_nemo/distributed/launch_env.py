"""Where this process sits in the job, read from the launcher's environment (torchrun or Slurm srun)."""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from xr_nemo.errors import LaunchError

DEFAULT_MASTER_PORT = 29500
# How long the processes of a job wait for each other at start-up before giving up with a message; the
# collectives of the running job have their own (longer) time-out.
RENDEZVOUS_TIMEOUT_VARIABLE = "XR_NEMO_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0
# What torchrun and Slurm set: a child command started without them runs as a job of its own.
LAUNCHER_VARIABLES = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GROUP_RANK",
        "ROLE_RANK",
        "TORCHELASTIC_RUN_ID",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "SLURM_NODEID",
    }
)


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[001-003,7],login1`` into host names, in order."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,]*)", nodelist):
        prefix, ranges, suffix = match.group(1), match.group(2), match.group(3)
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LaunchError(
                    f"cannot parse the Slurm node list {nodelist!r} (range {part!r})",
                    where="SLURM_JOB_NODELIST",
                    fix="set MASTER_ADDR to the first node's host name",
                )
            width = len(lo)
            for number in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{number:0{width}d}{suffix}")
    return hosts


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise LaunchError(
            f"environment variable {name}={value!r} is not an integer",
            where=name,
            fix="launch with torchrun or srun, which set it",
        ) from None


def _master_port(env: Mapping[str, str]) -> int:
    value = env["MASTER_PORT"]
    port = int(value) if value.strip().isdigit() else -1
    if not 1 <= port <= 65535:
        raise LaunchError(
            f"environment variable MASTER_PORT={value!r} is not a TCP port number (1–65535)",
            where="MASTER_PORT",
            fix="set MASTER_PORT to a free port such as 29500, or unset it (a single process picks one)",
        )
    return port


def _slurm_master_port(env: Mapping[str, str]) -> int:
    """A port every task of the job derives alike, so concurrent jobs on a node do not collide."""
    if "MASTER_PORT" in env:
        return _master_port(env)
    job_id = env.get("SLURM_JOB_ID", "")
    return 20000 + int(job_id) % 20000 if job_id.isdigit() else DEFAULT_MASTER_PORT


def rendezvous_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for every process of the job to arrive: XR_NEMO_RENDEZVOUS_TIMEOUT, else 300."""
    env = os.environ if env is None else env
    value = env.get(RENDEZVOUS_TIMEOUT_VARIABLE)
    if value is None:
        return DEFAULT_RENDEZVOUS_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise LaunchError(
            f"{RENDEZVOUS_TIMEOUT_VARIABLE}={value!r} is not a positive number of seconds",
            where=RENDEZVOUS_TIMEOUT_VARIABLE,
            fix=f"set it to e.g. 600, or unset it for {DEFAULT_RENDEZVOUS_TIMEOUT_S:g} s",
        )
    return seconds


def agent_serves_store(env: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun's agent already serves the job's store at MASTER_PORT (as torch's own rendezvous
    checks), so that rank 0 connects to it like every other rank."""
    env = os.environ if env is None else env
    return env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def launch_attempt(env: Mapping[str, str] | None = None) -> str:
    """Which start of the job this is: an elastic restart reuses the agent's store, and must not read the
    previous attempt's keys."""
    env = os.environ if env is None else env
    return f"{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def free_local_port() -> int:
    """A lone process needs no agreed port; a free one lets several run side by side."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_no_partial_launch(env: Mapping[str, str]) -> None:
    """WORLD_SIZE without RANK (or RANK without WORLD_SIZE) is a launch no launcher made: a leftover
    `export WORLD_SIZE=8` would otherwise run one process alone as if it were the job."""
    if "WORLD_SIZE" in env and _int_var(env, "WORLD_SIZE") != 1:
        size = env["WORLD_SIZE"]
        raise LaunchError(
            f"WORLD_SIZE={size} is set but RANK is not: no launcher started this process, so it would run "
            f"alone, not as one of {size}",
            where="environment (WORLD_SIZE)",
            fix=f"launch with `torchrun --nproc-per-node {size} …` (it sets RANK, WORLD_SIZE, MASTER_ADDR "
            "and MASTER_PORT) or srun, or unset WORLD_SIZE to run one process",
        )
    if "RANK" in env and _int_var(env, "RANK") != 0:
        raise LaunchError(
            f"RANK={env['RANK']} is set but WORLD_SIZE is not: no launcher started this process",
            where="environment (RANK)",
            fix="launch with torchrun or srun, or unset RANK to run one process",
        )


def read_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """torchrun's RANK/WORLD_SIZE first, then Slurm's SLURM_PROCID/SLURM_NTASKS, else one process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
        if missing:
            raise LaunchError(
                f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not",
                where="environment",
                fix="launch with torchrun, or export MASTER_ADDR and MASTER_PORT",
            )
        launch = LaunchEnv(
            rank=_int_var(env, "RANK"),
            world_size=_int_var(env, "WORLD_SIZE"),
            local_rank=_int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env["MASTER_ADDR"],
            master_port=_master_port(env),
            launcher="torchrun",
        )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if "MASTER_ADDR" in env:
            master_addr = env["MASTER_ADDR"]
        elif nodelist:
            master_addr = expand_nodelist(nodelist)[0]
        else:
            raise LaunchError(
                "running under Slurm but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set",
                where="environment",
                fix="launch with srun inside an sbatch/salloc allocation, or export MASTER_ADDR",
            )
        launch = LaunchEnv(
            rank=_int_var(env, "SLURM_PROCID"),
            world_size=_int_var(env, "SLURM_NTASKS"),
            local_rank=_int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=master_addr,
            master_port=_slurm_master_port(env),
            launcher="slurm",
        )
    else:
        _check_no_partial_launch(env)
        launch = LaunchEnv(
            0,
            1,
            0,
            env.get("MASTER_ADDR", "127.0.0.1"),
            _master_port(env) if "MASTER_PORT" in env else free_local_port(),
            "single",
        )
    if not 0 <= launch.rank < launch.world_size:
        raise LaunchError(
            f"rank {launch.rank} is outside the world of {launch.world_size} processes",
            where=f"{launch.launcher} environment",
            fix="check the launcher's task count",
        )
    return launch
