"""Evaluation prompts: the paper's evaluation templates (`xr_nemo.data.prompt_format`) as the only turn,
no system prompt. Images come first in the user turn, in order, as Qwen2.5-VL's chat template expects; a
question's "<image 1>" mentions stay as text and refer to that order. How a prompt makes room for an
image's features is the model family's (`ModelFamily.image_inputs`)."""

from __future__ import annotations

from typing import Any

from xr_nemo.data.prompt_format import evaluation_prompt, with_options
from xr_nemo.generation.engine import ImagePrompt, Prompt
from xr_nemo.models.family import ImageInputs
from xr_nemo.tasks.benchmark import EvalItem
from xr_nemo.tasks.images import UnusableImage, load_image


def messages(item: EvalItem, template: str = "paper") -> list[dict[str, Any]]:
    """The user turn: the paper's evaluation template around the question, or (`template="none"`) the
    question and its options alone."""
    text = (
        evaluation_prompt(item.question, item.options)
        if template == "paper"
        else with_options(item.question, item.options)
    )
    content: str | list[dict[str, str]] = text
    if item.images:
        content = [{"type": "image"} for _ in item.images] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


class PromptBuilder:
    """Items to engine prompts: chat-templated token ids, with each image decoded and its placeholder
    expanded as the model's `image_inputs` say (for Qwen2.5-VL, `<|image_pad|>` to the image's
    merged-patch count)."""

    def __init__(self, tokenizer, image_inputs: ImageInputs | None = None, template: str = "paper") -> None:
        self.tokenizer, self.image_inputs, self.template = tokenizer, image_inputs, template

    def text(self, item: EvalItem) -> str:
        return self.tokenizer.apply_chat_template(
            messages(item, self.template), tokenize=False, add_generation_prompt=True
        )

    def __call__(self, item: EvalItem) -> Prompt:
        text = self.text(item)
        if not item.images:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.image_inputs is None:
            raise ValueError("image items need the model's image inputs (its image processor)")
        images = tuple(load_image(source, item.where) for source in item.images)
        try:
            grids = self.image_inputs.processor(images=list(images), return_tensors="pt")["image_grid_thw"]
        except ValueError as error:  # e.g. "absolute aspect ratio must be smaller than 200"
            message = f"the model's image processor refuses the image: {error}"
            raise UnusableImage(message, where=item.where, fix="drop the item") from error
        text = self.image_inputs.expand(text, grids)
        return ImagePrompt(self.tokenizer(text, add_special_tokens=False)["input_ids"], images)
