"""The reference engine: plain forward passes of our Megatron model with per-completion seeded sampling.

No KV cache — every new token re-reads the whole sequence — so it is for tiny models and tests, where it
is the independent check on the vLLM engine and runs at any tensor-parallel size (the full-vocabulary
logits are gathered, so every tensor-parallel rank draws the same tokens). Pipeline parallelism is not
supported. Collective over the tensor-parallel group: its ranks must call it with the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from megatron.core import parallel_state, tensor_parallel

from xr_nemo.distributed.devices import to_device
from xr_nemo.errors import ConfigError
from xr_nemo.generation.engine import Completion, ImagePrompt, Prompt, Sampling
from xr_nemo.generation.sampling import draw


class ReferenceEngine:
    collective = True

    def __init__(self, model: torch.nn.Module, pad_id: int) -> None:
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            raise ConfigError(
                "the reference engine cannot run with pipeline parallelism",
                where="rollout.engine=reference",
                fix="use parallel.pipeline_parallel=1, or rollout.engine=vllm",
            )
        self.model = model
        self.pad_id = pad_id

    @torch.no_grad()
    def _next_token_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """[rows, vocab] on the host, where each row's generator draws from it."""
        lengths = torch.tensor([len(s) for s in sequences])
        width = int(lengths.max())
        tokens = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.tensor(sequence)
        positions = torch.arange(width).expand(3, len(sequences), width)
        rows = torch.arange(len(sequences))
        tokens, positions, rows, lengths = to_device((tokens, positions, rows, lengths))
        # Rows are right-padded: under causal attention no real token sees the padding.
        logits = self.model(tokens, positions, None)
        last = logits[rows, lengths - 1]
        return tensor_parallel.gather_from_tensor_model_parallel_region(last).float().cpu()

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], sampling: Sampling) -> list[Completion]:
        if any(isinstance(prompt, ImagePrompt) for prompt in prompts):
            raise ConfigError(
                "the reference engine samples text prompts only",
                where="rollout.engine=reference",
                fix="use rollout.engine=vllm, or the Hugging Face engine for image prompts",
            )
        was_training = self.model.training
        self.model.eval()
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        completions = [Completion([], []) for _ in prompts]
        active = list(range(len(prompts)))
        for _ in range(sampling.max_new_tokens):
            if not active:
                break
            logits = self._next_token_logits([prompts[i] + completions[i].token_ids for i in active])
            logprobs = torch.log_softmax(logits / max(sampling.temperature, 1e-6), dim=-1)
            still_active = []
            for row, i in enumerate(active):
                token = draw(logprobs[row], sampling, generators[i])
                completion = completions[i]
                completion.token_ids.append(token)
                completion.logprobs.append(float(logprobs[row, token]))
                completion.sampled.append(True)
                if token in sampling.stop_token_ids:
                    completion.finished = True
                else:
                    still_active.append(i)
            active = still_active
        self.model.train(was_training)
        return completions

    def refit(self, model: torch.nn.Module) -> None:
        """The engine runs the training model itself: there is nothing to load."""

    def sleep(self, level: int) -> None:
        """Its weights are the training model's and it keeps no KV cache: there is nothing to release."""

    def wake_weights(self) -> None:
        pass

    def wake_cache(self) -> None:
        pass

    def close(self) -> None:
        pass
