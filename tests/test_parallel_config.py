import pytest

from xr_nemo.config import ParallelConfig
from xr_nemo.errors import ConfigError


def test_data_parallel_size_is_what_model_parallelism_leaves():
    assert ParallelConfig(tensor_parallel=2, pipeline_parallel=2).data_parallel_size(16) == 4
    assert ParallelConfig().data_parallel_size(3) == 3


def test_sizes_that_do_not_divide_the_world_are_refused_with_the_numbers():
    with pytest.raises(ConfigError) as error:
        ParallelConfig(tensor_parallel=4, pipeline_parallel=1).data_parallel_size(6)
    message = str(error.value)
    assert "world size 6" in message and "4" in message and "fix:" in message


def test_sequence_parallel_needs_tensor_parallel():
    with pytest.raises(ConfigError, match="sequence_parallel needs tensor_parallel > 1"):
        ParallelConfig(sequence_parallel=True).data_parallel_size(2)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_non_positive_sizes_are_refused(bad):
    with pytest.raises(ConfigError, match="positive integer"):
        ParallelConfig(pipeline_parallel=bad).data_parallel_size(4)
