"""megatron-core's (distributed) Adam, its learning rate, and its checkpoint state."""

from __future__ import annotations

import math

import torch
from megatron.core.dist_checkpointing.mapping import ShardedStateDict
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer

from xr_nemo.config.schema import OptimConfig

# Each data-parallel rank saves its own flat shards; megatron-core's model-space formats go through CUDA.
CHECKPOINT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def build_optimizer(
    model_chunks: list[torch.nn.Module], config: OptimConfig, distributed: bool, bf16: bool = False
) -> MegatronOptimizer:
    """Adam with fp32 main weights (for bf16 models too) and global-norm gradient clipping."""
    return get_megatron_optimizer(
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
