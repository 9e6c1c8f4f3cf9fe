import pytest

from xr_nemo.distributed import expand_nodelist, read_launch_env
from xr_nemo.errors import LaunchError


def test_torchrun_environment_is_read():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29400"}
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 8, 1)
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("node7", 29400, "torchrun")


def test_slurm_environment_takes_the_first_node_as_master():
    env = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu-[007-008]",
        "SLURM_JOB_ID": "123456",
    }
    launch = read_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank) == (9, 16, 1)
    assert launch.master_addr == "gpu-007"
    assert launch.master_port == 20000 + 123456 % 20000
    assert launch.launcher == "slurm"


def test_slurm_respects_explicit_master():
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NODELIST": "a1",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "1234",
    }
    launch = read_launch_env(env)
    assert (launch.master_addr, launch.master_port) == ("head", 1234)


def test_no_launcher_means_one_process():
    launch = read_launch_env({})
    assert (launch.rank, launch.world_size, launch.launcher) == (0, 1, "single")


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[001-003]", ["gpu001", "gpu002", "gpu003"]),
        ("gpu[01,05-06],login1", ["gpu01", "gpu05", "gpu06", "login1"]),
        ("rack[8-10]-ib", ["rack8-ib", "rack9-ib", "rack10-ib"]),
        ("a[1-2],b[3]", ["a1", "a2", "b3"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_missing_master_port_under_torchrun_is_explained():
    with pytest.raises(LaunchError, match="MASTER_PORT"):
        read_launch_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x"})


def test_non_integer_rank_is_explained():
    with pytest.raises(LaunchError, match="SLURM_PROCID='abc'"):
        read_launch_env({"SLURM_PROCID": "abc", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1"})


def test_rank_outside_world_is_refused():
    with pytest.raises(LaunchError, match="outside the world"):
        read_launch_env({"RANK": "4", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"})


def test_unparseable_nodelist_is_explained():
    with pytest.raises(LaunchError, match="Slurm node list"):
        expand_nodelist("gpu[a-b]")
