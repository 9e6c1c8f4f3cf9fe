"""The vocabulary-sized weight gradients written straight into megatron-core DDP's gradient buffer.

megatron-core's DDP keeps every gradient in one contiguous buffer (`param.main_grad`), but autograd
still produces each parameter's gradient as a tensor of its own that a hook then adds into the buffer
(megatron-core writes into the buffer directly only with Apex's CUDA kernel,
`gradient_accumulation_fusion`). For the word embedding and the output layer, [vocabulary / TP ×
hidden], that tensor is the largest transient of a training step, and with tied embeddings autograd
holds the output layer's through the whole backward pass until the embedding's arrives to be summed
with it: at Qwen2.5-0.5B's shape two 0.51 GiB tensors at the peak of the step.

Here the output layer's weight gradient is accumulated by the GEMM itself (`main_grad.addmm_`) and the
embedding's by adding each token's row (`index_add_`), so neither exists as a tensor. Forward values are
megatron-core's (the same calls), the input gradients and their tensor- and sequence-parallel
reductions are megatron-core's own autograd functions, and the weight gradients equal megatron-core's
bit for bit over one micro-batch (over several, the buffer is added to in another order: rounding).

Installed only where it is exact, safe and measured: on CPU, where the weight's dtype is its buffer's
(an fp32 buffer under bf16 weights would accumulate at another precision), and DDP does not overlap its
gradient reduction with the backward pass (which counts each parameter's hook, and these weights no
longer reach it).
Anywhere else — no DDP (reference models, inference), no gradient, Apex's fusion or deferred embedding
gradients switched on — megatron-core's own path runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)


def _into_buffer(weight: torch.Tensor) -> bool:
    """Whether this forward's gradient for `weight` goes into its DDP buffer directly: on CPU only,
    where it was measured (the embedding's backward finds the distinct ids of the batch, a host sync
    on a GPU)."""
    main_grad = getattr(weight, "main_grad", None)
    return (
        torch.is_grad_enabled()
        and weight.requires_grad
        and weight.device.type == "cpu"
        and main_grad is not None
        and main_grad.dtype == weight.dtype
    )


class _LinearIntoMainGrad(torch.autograd.Function):
    """y = x·Wᵀ (+ b), as megatron-core's linear computes it; the backward adds gᵀ·x into W's buffer
    in the GEMM and returns no gradient for W."""

    @staticmethod
    def forward(ctx: Any, input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(input_, weight)
        ctx.main_grad = weight.main_grad  # kept off the saved tensors, as megatron-core does
        ctx.use_bias = bias is not None
        output = torch.matmul(input_, weight.t())
        return output + bias if bias is not None else output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        input_, weight = ctx.saved_tensors
        grad_input = grad_output.matmul(weight)
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        ctx.main_grad.addmm_(rows.t(), input_.reshape(-1, input_.shape[-1]))
        return grad_input, None, rows.sum(0) if ctx.use_bias else None


class _LookupIntoMainGrad(torch.autograd.Function):
    """F.embedding(ids, W); the backward adds each token's gradient row into W's buffer and returns no
    gradient for W. Rows of repeated ids are summed first, in F.embedding's own backward order, so the
    buffer receives the sum that F.embedding's dense gradient would hold."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.main_grad = weight.main_grad
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        (ids,) = ctx.saved_tensors
        unique, inverse = torch.unique(ids, return_inverse=True)
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        rows = grad.new_zeros(unique.numel(), grad.shape[-1]).index_add_(0, inverse.flatten(), grad)
        ctx.main_grad.index_add_(0, unique, rows)
        return None, None


def _output_forward_impl(layer: ColumnParallelLinear):
    """`layer._forward_impl` (megatron-core's linear with its backward communication) with the weight
    gradient accumulated into the buffer; the input's all-gather (sequence parallel) or its gradient's
    all-reduce (tensor parallel) by megatron-core's autograd functions, as its linear does them."""
    original = layer._forward_impl

    def forward_impl(**kwargs: Any) -> torch.Tensor:  # megatron-core passes every argument by name
        input_, weight, group = kwargs["input"], kwargs["weight"], kwargs["tp_group"]
        fused = kwargs["gradient_accumulation_fusion"] or kwargs.get("grad_output_buffer") is not None
        if fused or not _into_buffer(weight):
            return original(**kwargs)
        if kwargs["sequence_parallel"]:
            input_ = gather_from_sequence_parallel_region(input_, True, group=group)
        elif kwargs["allreduce_dgrad"]:
            input_ = copy_to_tensor_model_parallel_region(input_, group=group)
        return _LinearIntoMainGrad.apply(input_, weight, kwargs["bias"])

    return forward_impl


def _embedding_forward(embedding: VocabParallelEmbedding):
    """`VocabParallelEmbedding.forward` (megatron-core 0.16.1's steps) with the lookup's weight gradient
    accumulated into the buffer."""
    original = embedding.forward

    def forward(input_: torch.Tensor) -> torch.Tensor:
        if not _into_buffer(embedding.weight):
            return original(input_)
        group = embedding.tp_group
        if group.size() > 1:
            mask = (input_ < embedding.vocab_start_index) | (input_ >= embedding.vocab_end_index)
            masked = input_.clone() - embedding.vocab_start_index
            masked[mask] = 0
        else:
            masked = input_
        output = _LookupIntoMainGrad.apply(masked, embedding.weight)
        if group.size() > 1:
            output[mask, :] = 0.0
        if embedding.reduce_scatter_embeddings:
            return reduce_scatter_to_sequence_parallel_region(
                output.transpose(0, 1).contiguous(), group=group
            )
        return reduce_from_tensor_model_parallel_region(output, group=group)

    return forward


def accumulate_vocab_gradients_in_place(
    model: torch.nn.Module, ddp_config: DistributedDataParallelConfig
) -> int:
    """Route the word embedding's and the output layer's weight gradients of every GPTModel in `model`
    into their DDP buffers (see the module's docstring); return how many layers now do. Nothing when
    DDP overlaps its gradient reduction with the backward pass."""
    if ddp_config.overlap_grad_reduce:
        return 0
    installed = 0
    for gpt in (m for m in model.modules() if isinstance(m, GPTModel)):
        if gpt.pre_process:
            words = gpt.embedding.word_embeddings
            words.forward = _embedding_forward(words)
            installed += 1
        if gpt.post_process:
            gpt.output_layer._forward_impl = _output_forward_impl(gpt.output_layer)
            installed += 1
    return installed
