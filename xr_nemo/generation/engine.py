"""One interface for rollout engines, and forced exiting on top of any of them.

An engine samples one completion per (prompt, seed) pair — `n` completions of a prompt are `n` seeds —
so a completion depends only on its prompt, its seed and the weights: never on batching, engine
internals or which rank produced it. That makes rollouts reproducible on resume.

Forced exiting (X-Reasoner's fix for endless thinking after long-CoT SFT): when a completion reaches the
thinking budget without closing its thinking, `\n</think>\n\n` (the layout of the SFT targets) is
appended once and the model continues with the answer budget. Whether the thinking closed is decided on
the decoded text, not on token ids: Qwen2.5's vocabulary has no `</think>` token and merges its `>` with
the newlines that follow. Appended tokens are marked as not sampled, so they carry no policy-gradient
loss.

Colocated with training, an engine is driven in the order vLLM documents for weight updates:
`sleep(level)` before training, then `wake_weights()`, `refit(model)`, `wake_cache()` before sampling.
Engines without memory of their own to release take these as no-ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from xr_nemo.config.schema import GenerationConfig

END_THINKING = "</think>"
FORCED_EXIT_TEXT = f"\n{END_THINKING}\n\n"


@dataclass(frozen=True)
class ForcedExit:
    """Close the thinking of a completion that reaches `budget` tokens with it still open."""

    budget: int
    suffix_ids: tuple[int, ...]  # FORCED_EXIT_TEXT, tokenised
    decode: Callable[[list[int]], str]

    @classmethod
    def of(cls, tokenizer, budget: int | None) -> ForcedExit | None:
        if budget is None:
            return None
        suffix = tuple(tokenizer.encode(FORCED_EXIT_TEXT, add_special_tokens=False))
        return cls(budget, suffix, lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    def closed(self, token_ids: list[int]) -> bool:
        return END_THINKING in self.decode(token_ids)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    forced_exit: ForcedExit | None = None  # None: never

    @classmethod
    def of(cls, generation: GenerationConfig, tokenizer) -> Sampling:
        """The one way from settings to sampling (GRPO, evaluation, distillation, the demo), so a
        generation setting cannot reach one engine and not another; the turn ends at the chat's stops."""
        return cls(
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            stop_token_ids=chat_stop_ids(tokenizer),
            forced_exit=ForcedExit.of(tokenizer, generation.thinking_budget),
        )


@dataclass(frozen=True)
class ImagePrompt:
    """A prompt with images: token ids in which each image's `<|image_pad|>` run is already expanded to
    its merged-patch count, and the decoded (PIL) images in the order of those runs."""

    token_ids: list[int]
    images: tuple[Any, ...]

    def __add__(self, more: list[int]) -> ImagePrompt:
        return ImagePrompt(self.token_ids + list(more), self.images)

    def __len__(self) -> int:
        return len(self.token_ids)


Prompt = list[int] | ImagePrompt


def token_ids(prompt: Prompt) -> list[int]:
    return prompt.token_ids if isinstance(prompt, ImagePrompt) else list(prompt)


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # per token, under the engine's sampling distribution
    sampled: list[bool] = field(default_factory=list)  # False for tokens the engine was made to append
    finished: bool = False  # ended by a stop token (not by the token budget)
    forced_exit: bool = False

    def __post_init__(self) -> None:
        if not self.sampled:
            self.sampled = [True] * len(self.token_ids)


def chat_stop_ids(tokenizer) -> tuple[int, ...]:
    """The tokens that end a chat turn: ChatML's `<|im_end|>`, `<|endoftext|>` and the tokenizer's eos."""
    names = ("<|im_end|>", "<|endoftext|>")
    ids = {tokenizer.convert_tokens_to_ids(name) for name in names} | {tokenizer.eos_token_id}
    return tuple(sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id))


class Engine(Protocol):
    # True when every rank of a model-parallel group runs the engine together on the same prompts (the
    # reference engine, which is the training model); False when each rank has an engine of its own.
    collective: bool

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], sampling: Sampling) -> list[Completion]:
        """One completion per (prompt, seed), up to `sampling.max_new_tokens`, ended by a stop token."""

    def refit(self, model: torch.nn.Module) -> None:
        """Take the weights of the live megatron-core model. Collective over its model-parallel group."""

    def sleep(self, level: int) -> None:
        """Release memory while training runs. Level 1 drops the KV cache and moves the weights to host
        memory; level 2 drops the weights too (the next refit rewrites them anyway)."""

    def wake_weights(self) -> None:
        """Give the weights their memory back, so that refit can write into it; the KV cache stays
        released while the new weights arrive, which lowers the peak."""

    def wake_cache(self) -> None:
        """Give the KV cache its memory back: the engine can sample again."""

    def close(self) -> None:
        """Release the engine; the last call on it."""


def generate(
    engine: Engine, prompts: Sequence[Prompt], n: int, seed: int, sampling: Sampling
) -> list[list[Completion]]:
    """`n` completions per prompt; completion j of prompt i uses seed `seed + i·n + j`."""
    return generate_from_seeds(engine, prompts, [seed + i * n for i in range(len(prompts))], n, sampling)


def generate_from_seeds(
    engine: Engine, prompts: Sequence[Prompt], first_seeds: Sequence[int], n: int, sampling: Sampling
) -> list[list[Completion]]:
    """`n` completions per prompt; completion j of prompt i uses seed `first_seeds[i] + j`."""
    flat_prompts = [prompt for prompt in prompts for _ in range(n)]
    seeds = [first + j for first in first_seeds for j in range(n)]
    flat = _sample_with_forced_exit(engine, flat_prompts, seeds, sampling)
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def _sample_with_forced_exit(
    engine: Engine, prompts: list[Prompt], seeds: list[int], sampling: Sampling
) -> list[Completion]:
    exit_ = sampling.forced_exit
    if exit_ is None or exit_.budget >= sampling.max_new_tokens:
        return engine.sample(prompts, seeds, sampling)
    budget = exit_.budget
    thinking = engine.sample(prompts, seeds, _with_budget(sampling, budget))
    open_ones = [i for i, c in enumerate(thinking) if not c.finished]
    answer_budget = sampling.max_new_tokens - budget
    continued_prompts = []
    for i in open_ones:
        completion = thinking[i]
        if not exit_.closed(completion.token_ids):
            forced = list(exit_.suffix_ids)[:answer_budget]
            completion.token_ids += forced
            completion.logprobs += [0.0] * len(forced)
            completion.sampled += [False] * len(forced)
            completion.forced_exit = True
        continued_prompts.append(prompts[i] + completion.token_ids)
    remaining = [
        answer_budget - (len(thinking[i].token_ids) - budget) for i in open_ones
    ]  # the forced tokens count against the answer budget
    todo = [k for k, left in enumerate(remaining) if left > 0]
    if todo:
        # `sample` takes one budget for all; continue each with the smallest common budget per group
        for left in sorted({remaining[k] for k in todo}):
            group = [k for k in todo if remaining[k] == left]
            answers = engine.sample(
                [continued_prompts[k] for k in group],
                [seeds[open_ones[k]] + 1_000_003 for k in group],
                _with_budget(sampling, left),
            )
            for k, answer in zip(group, answers, strict=True):
                completion = thinking[open_ones[k]]
                completion.token_ids += answer.token_ids
                completion.logprobs += answer.logprobs
                completion.sampled += answer.sampled
                completion.finished = answer.finished
    return thinking


def _with_budget(sampling: Sampling, tokens: int) -> Sampling:
    return replace(sampling, max_new_tokens=tokens, forced_exit=None)
