"""megatron-core's (distributed) Adam, its learning rate, and its checkpoint state.

Three things megatron-core 0.16.1 does that cost time and memory on CPU, changed here without changing
what is computed or what a checkpoint holds:
- Without Transformer Engine or Apex it falls back to torch's Adam with the default implementation,
  which on CPU is the single-tensor loop (several passes over each tensor and a temporary per
  parameter). On CPU ours is torch's fused kernel instead (one pass, no temporaries; TRL's default).
  torch's foreach implementation gives bit-identical results but holds temporaries for every
  parameter at once (+1.3-1.8 GiB at 0.5 B parameters): not chosen.
- With the distributed optimizer over one data-parallel rank, the gradient reduce-scatter and the
  parameter all-gather map each buffer onto itself, yet gloo copies the whole buffer through a
  temporary of its size (at 0.5 B parameters ~2 s and 1.84 GiB each). There, on CPU buffers, they are
  skipped. The
  optimizer stays the distributed one, so its checkpoints keep their format and still resume at any
  data-parallel size (megatron-core's plain optimizers store another format, which the distributed
  one cannot load, so switching to them at one rank would tie a checkpoint to its data-parallel size).
- Without Transformer Engine or Apex, gradient clipping scales each gradient with megatron-core's
  local `multi_tensor_scale`, `dst.copy_(src * scale)`: a temporary the size of each gradient, the
  largest the vocabulary-sized one (0.51 GiB at Qwen2.5-0.5B's shape, at the step's peak). The same
  product is written in place instead (`torch.mul(..., out=dst)`, bit for bit the same values).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from megatron.core import utils as megatron_utils
from megatron.core.dist_checkpointing.mapping import ShardedStateDict
from megatron.core.distributed import param_and_grad_buffer
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, clip_grads, get_megatron_optimizer

from xr_nemo.config.schema import OptimConfig

# Each data-parallel rank saves its own flat shards; megatron-core's model-space formats go through CUDA.
CHECKPOINT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
# the collectives megatron-core's bucket groups call by these module-level names
BUFFER_COLLECTIVES = ("dist_reduce_scatter_func", "dist_all_gather_func")


def build_optimizer(
    model_chunks: list[torch.nn.Module], config: OptimConfig, distributed: bool, bf16: bool = False
) -> MegatronOptimizer:
    """Adam with fp32 main weights (for bf16 models too) and global-norm gradient clipping; fused on CPU,
    and without collectives over a one-rank data-parallel group (see the module's docstring)."""
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=config.lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.beta1,
            adam_beta2=config.beta2,
            adam_eps=config.eps,
            # no clipping: an infinite bound, so the gradient norm is still measured and reported
            clip_grad=math.inf if config.clip_grad is None else config.clip_grad,
            use_distributed_optimizer=distributed,
            bf16=bf16,
        ),
        model_chunks,
    )
    use_fused_adam_on_cpu(optimizer)
    skip_one_rank_collectives(model_chunks)
    clip_in_place()
    return optimizer


def _scale_in_place(chunk_size: int, noop_flag: torch.Tensor, tensor_lists: list, scale: float) -> None:
    """megatron-core's local `multi_tensor_scale` without its temporary: dst = src · scale."""
    for src, dst in zip(tensor_lists[0], tensor_lists[1], strict=True):
        torch.mul(src, scale, out=dst)


def clip_in_place() -> None:
    """Gradient clipping's scaling in place where megatron-core fell back to its local implementation
    (no Transformer Engine, no Apex); their fused kernels are left alone."""
    if clip_grads.multi_tensor_scale_impl is megatron_utils.local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = _scale_in_place


def _torch_adams(optimizer: MegatronOptimizer) -> Iterator[torch.optim.Adam]:
    """The torch Adam(W) optimizers inside megatron-core's wrappers (none when TE's or Apex's is used)."""
    for inner in _inner_optimizers(optimizer):
        adam = getattr(inner, "optimizer", None)
        if isinstance(adam, torch.optim.Adam | torch.optim.AdamW):
            yield adam


def use_fused_adam_on_cpu(optimizer: MegatronOptimizer) -> None:
    """torch's fused Adam kernel for optimizers whose parameters are all on the CPU. megatron-core builds
    torch's Adam without naming an implementation, and a loaded checkpoint's param groups name the one
    of the run that wrote it: this is set after building and after loading."""
    for adam in _torch_adams(optimizer):
        if all(p.device.type == "cpu" for group in adam.param_groups for p in group["params"]):
            for group in adam.param_groups:
                group["fused"], group["foreach"] = True, False


def _same_buffer(output: torch.Tensor, input_: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    """A reduce-scatter or all-gather over one rank: the output is the input. megatron-core passes a
    buffer and its only shard, which are the same memory; anything else is copied."""
    same = output.data_ptr() == input_.data_ptr() and output.shape == input_.shape
    if not same:
        output.copy_(input_)


@contextlib.contextmanager
def _collectives_in_place() -> Iterator[None]:
    saved = {name: getattr(param_and_grad_buffer, name) for name in BUFFER_COLLECTIVES}
    for name in BUFFER_COLLECTIVES:
        setattr(param_and_grad_buffer, name, _same_buffer)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(param_and_grad_buffer, name, function)


def _in_place(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _collectives_in_place():
            return method(*args, **kwargs)

    return run


def skip_one_rank_collectives(model_chunks: list[torch.nn.Module]) -> None:
    """Run the gradient and parameter syncs of each distributed-optimizer bucket group whose collective
    group has one rank, and whose buffers are on the CPU (gloo, where the copies were measured; NCCL's
    one-rank collectives are left as megatron-core issues them), with its reduce-scatter and all-gather
    as the identity; everything else they do (gradient scaling, checks, bookkeeping) is megatron-core's
    own."""
    for chunk in model_chunks:
        for group in [*chunk.bucket_groups, *chunk.expert_parallel_bucket_groups]:
            ddp = group.ddp_config
            if (
                ddp.use_distributed_optimizer
                and ddp.num_distributed_optimizer_instances == 1
                and group.intra_distributed_optimizer_instance_size == 1
                and all(bucket.grad_data.device.type == "cpu" for bucket in group.buckets)
            ):
                group.start_grad_sync = _in_place(group.start_grad_sync)
                group.start_param_sync = _in_place(group.start_param_sync)


def set_learning_rate(optimizer: MegatronOptimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _inner_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def optimizer_state_to_save(optimizer: MegatronOptimizer, model_state: ShardedStateDict) -> ShardedStateDict:
    return optimizer.sharded_state_dict(model_state, metadata=CHECKPOINT_METADATA)


def optimizer_state_to_load(optimizer: MegatronOptimizer, model_state: ShardedStateDict) -> ShardedStateDict:
    """The state dict to load into. The distributed optimizer needs its Adam state allocated first
    (megatron-core does it with one zero-gradient step; the loaded values then replace everything)."""
    for inner in _inner_optimizers(optimizer):
        if hasattr(inner, "_init_optimizer_states_with_dummy_values") and not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()
    return optimizer.sharded_state_dict(model_state, is_loading=True, metadata=CHECKPOINT_METADATA)


@torch.no_grad()  # megatron-core 0.16.1 copies into leaf parameters without it
def load_optimizer_state(optimizer: MegatronOptimizer, state: dict) -> None:
    optimizer.load_state_dict(state)
    use_fused_adam_on_cpu(optimizer)
    # With torch's Adam (no TE/Apex), megatron-core 0.16.1 restores each parameter's Adam step from a
    # non-persistent local value; the saved step is in the param groups: put it back.
    inners = _inner_optimizers(optimizer)
    saved = [state] if len(inners) == 1 else [state[i] for i in sorted(state)]
    for inner, inner_state in zip(inners, saved, strict=True):
        groups = inner_state.get("optimizer", {}).get("param_groups", [])
        steps = {group["step"] for group in groups if group.get("step") is not None}
        if len(steps) == 1:
            step = float(steps.pop())
            for param_state in inner.optimizer.state.values():
                param_state["step"] = torch.tensor(step)
