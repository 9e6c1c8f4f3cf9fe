"""Train the tiny megatron-core GPT on a learnable toy task under a given parallel layout.

Used by `xr-nemo demo` to show, on two CPU processes, that tensor-parallel training follows the
single-process loss curve step for step.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from xr_nemo.config import ParallelConfig

BATCH = 8
LEARNING_RATE = 3e-3


def counting_batch(step: int, vocab_size: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Sequences that count upward modulo the vocabulary from a random start: learnable in a few steps."""
    generator = torch.Generator().manual_seed(1000 + step)
    starts = torch.randint(0, vocab_size, (BATCH, 1), generator=generator)
    tokens = (starts + torch.arange(seq_len + 1)) % vocab_size
    positions = torch.arange(seq_len).expand(BATCH, -1)
    return tokens[:, :-1], positions, tokens[:, 1:]


def train_worker(parallel: ParallelConfig, steps: int, seed: int) -> list[float]:
    """Run `steps` optimizer steps; every rank returns the loss per step (the same on every rank)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.testing.tiny_gpt import SEQ_LEN, VOCAB_SIZE, build_tiny_gpt, tiny_gpt_config

    initialize(parallel, seed=seed)
    torch.manual_seed(seed)
    model = build_tiny_gpt(tiny_gpt_config(num_layers=2, sequence_parallel=parallel.sequence_parallel))
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=LEARNING_RATE, clip_grad=1.0), [ddp]
    )
    losses = []
    show = dist.get_rank() == 0
    for step in tqdm(range(steps), desc=f"train TP={parallel.tensor_parallel}", disable=not show):
        inputs, positions, labels = counting_batch(step, VOCAB_SIZE, SEQ_LEN)
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        loss = ddp(inputs, positions, None, labels=labels).mean()
        loss.backward()
        finalize_model_grads([ddp])
        optimizer.step()
        losses.append(loss.item())
    assert parallel_state.get_tensor_model_parallel_world_size() == parallel.tensor_parallel
    shutdown()
    return losses
