"""The CPU compatibility layer: every patched name still exists and still needs patching.

A megatron-core upgrade that moves or fixes one of these breaks a test here, by name, before it
breaks a training run.
"""

import importlib
import inspect
import re

import pytest
import torch

from xr_nemo.distributed import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is inert where CUDA exists")

_CUDA_USE = re.compile(r"torch\.cuda\.|device=[\"']cuda[\"']")


@pytest.mark.parametrize("module_name", cpu_compat.PATCHED_MODULES)
def test_patched_module_exists_and_calls_cuda(module_name):
    module = importlib.import_module(module_name)
    assert getattr(module, "torch", None) is not None, f"{module_name} no longer imports torch"
    assert _CUDA_USE.search(inspect.getsource(module)), f"{module_name} no longer calls CUDA: drop it"


@pytest.mark.parametrize(("module_name", "qualified_name"), cpu_compat.CUDA_TYPE_CHECKS)
def test_cuda_type_checks_still_exist(module_name, qualified_name):
    owner, attribute = cpu_compat.resolve(module_name, qualified_name)
    function = inspect.unwrap(getattr(owner, attribute))
    assert "torch.cuda." in inspect.getsource(function) and "Tensor" in inspect.getsource(function)


@pytest.mark.parametrize(("module_name", "qualified_name"), cpu_compat.CUDA_MOVES)
def test_cuda_moves_still_exist(module_name, qualified_name):
    owner, attribute = cpu_compat.resolve(module_name, qualified_name)
    assert ".cuda()" in inspect.getsource(inspect.unwrap(getattr(owner, attribute)))


def test_rng_state_helpers_still_exist():
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state", "model_parallel_cuda_manual_seed"):
        assert callable(getattr(random, name)), name


def test_model_parallel_rng_tracker_forks_a_reproducible_stream_on_cpu():
    cpu_compat.apply()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    def draws() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0)
        before = torch.rand(3)
        with get_cuda_rng_tracker().fork():
            forked = torch.rand(3)
        after = torch.rand(3)
        return before, forked, after

    first, second = draws(), draws()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], first[0])
    # The fork leaves the default stream where it would have been without it.
    torch.default_generator.manual_seed(123)
    expected = torch.rand(6)
    assert torch.equal(torch.cat([first[0], first[2]]), expected)


def test_patched_torch_maps_cuda_placement_to_cpu_and_leaves_torch_alone():
    cpu_compat.apply()
    cpu_compat.apply()  # idempotent
    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    assert schedules.torch.zeros(2, device="cuda").device.type == "cpu"
    assert schedules.torch.cuda.current_device() == "cpu"
    assert schedules.torch.cuda.synchronize() is None
    assert torch.zeros(1).type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")


def test_tensor_type_reports_cuda_names_only_inside_wrapped_functions():
    seen = []
    reporting = cpu_compat._while_running("type", cpu_compat._type_with_cuda_names)
    wrapped = reporting(lambda: seen.append(torch.zeros(1).type()))
    wrapped()
    assert seen == ["torch.cuda.FloatTensor"]
    assert torch.zeros(1).type() == "torch.FloatTensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64


def test_tensor_cuda_is_a_no_op_only_inside_wrapped_functions():
    tensor = torch.zeros(2)
    staying = cpu_compat._while_running("cuda", cpu_compat._stay_on_cpu)
    assert staying(lambda: tensor.cuda())() is tensor
    with pytest.raises((AssertionError, RuntimeError)):
        tensor.cuda()
