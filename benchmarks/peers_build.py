"""What both sides of the measured runs share: the model (a random Qwen2.5-VL of a chosen language
shape, with its `Qwen2ForCausalLM` twin for TRL), the SFT samples and the GRPO prompts, and the run
sizes (`Shape`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peers_loss import max_diff


@dataclass(frozen=True)
class Shape:
    """A model shape and the run sizes that keep it feasible on a 2-core CPU."""

    vocab: str
    spec: dict[str, Any]  # `TinyQwen25VLSpec` fields over the vocabulary's defaults
    sft_samples: int  # one epoch of them on each side
    sft_heldout: int  # the loss after training is taken on these
    seq_length: int  # longest sample and packed row, both sides
    sft_lr: float
    prompts: int  # GRPO prompts per step (the same ones every step)
    n: int
    new_tokens: int
    grpo_steps: int  # the first warms up and is not counted
    micro_batch: int
    grpo_lr: float


def shapes() -> dict[str, Shape]:
    """`quick` for development; the Qwen2.5-0.5B language shape as `grpo_step.py` builds it, with run
    sizes that keep one run at about 10 minutes on a shared 2-core CPU (each size can be set)."""
    from grpo_step import SHAPES as GRPO_SHAPES

    half_b = GRPO_SHAPES["qwen2.5-0.5b"]
    return {
        "quick": Shape(
            "tiny", {"num_kv_heads": 2}, sft_samples=24, sft_heldout=4, seq_length=256, sft_lr=1e-3,
            prompts=4, n=4, new_tokens=16, grpo_steps=2, micro_batch=4, grpo_lr=1e-4,
        ),
        "qwen2.5-0.5b": Shape(
            half_b.vocab, half_b.spec, sft_samples=6, sft_heldout=2, seq_length=384, sft_lr=1e-4,
            prompts=2, n=4, new_tokens=24, grpo_steps=2, micro_batch=4, grpo_lr=1e-6,
        ),
    }  # fmt: skip


SIZES = ("sft_samples", "sft_heldout", "seq_length", "prompts", "n", "new_tokens", "grpo_steps")  # CLI
SEED = 1234  # both sides' training seed (ours: trainer.seed's default)
# words of ordinary text (one token each in Qwen2.5's vocabulary): what the samples are written in
WORDS_TEXT = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you "
    "were all we her she there would their will when who him been has more if no out do so can what up "
    "said about other into than its time only could new them man some these then two first may any like "
    "now my such make over our even most me state after also made many did must before back see through "
    "way where get much go well your know should down work year because come people just say each those "
    "take day good how long own too little use us very great still men here life both between old under "
    "last never place same another think house while high right might came off find since used give "
    "against three himself look few general hand school part small home during number again around"
)


def causal_lm_twin(hf_dir: Path, out: Path) -> Path:
    """The language model of the Qwen2.5-VL checkpoint as a `Qwen2ForCausalLM` checkpoint: the same
    tensors (vision tower left out), the same tokenizer and generation config."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2Config

    if (out / "model.safetensors").exists():
        return out
    text = AutoConfig.from_pretrained(hf_dir).text_config
    config = Qwen2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        hidden_act=text.hidden_act,
        tie_word_embeddings=text.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_parameters["rope_theta"]},
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        dtype="float32",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    weights = load_file(str(hf_dir / "model.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("visual.")}, str(out / "model.safetensors")
    )
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(out)
    GenerationConfig.from_pretrained(hf_dir).save_pretrained(out)
    return out


@torch.no_grad()
def twin_logits_difference(hf_dir: Path, lm_dir: Path, tokens: int = 24) -> float:
    """Max |Δ logit| of the two checkpoints on one random text: the same function, or not."""
    from transformers import AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    vl = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.randint(
        0, vl.config.text_config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)
    )
    expected = vl(input_ids=ids).logits
    del vl
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    return max_diff(lm(input_ids=ids).logits, expected)


def _text(tokenizer, count: int, rng: np.random.Generator) -> str:
    """About `count` tokens of random words (each word's token count measured on its own)."""
    words = WORDS_TEXT.split()
    sizes = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}
    chosen, total = [], 0
    while total < count:
        word = words[rng.integers(len(words))]
        chosen.append(word)
        total += sizes[word]
    return " ".join(chosen)


def sft_conversations(tokenizer, count: int, seq_length: int, seed: int) -> list[tuple[str, str]]:
    """(question, answer) pairs: 20-40-token questions, answers of long-tailed lengths (log-normal, as
    `packing.py` draws OpenThoughts-like lengths) cut so that every rendered sample fits `seq_length`
    (neither side truncates)."""
    from packing import long_tailed_lengths

    rng = np.random.default_rng(seed)
    overhead = 40  # the chat template's system turn and markers
    answers = long_tailed_lengths(count, 24, seq_length - 40 - overhead - 8, seed=seed)
    return [
        (f"Question {i}: {_text(tokenizer, int(rng.integers(20, 40)), rng)}?", _text(tokenizer, n, rng))
        for i, n in enumerate(answers)
    ]


def write_sft_data(tokenizer, work: Path, shape: Shape) -> dict[str, str]:
    """Training and held-out samples in our `messages` schema and in TRL's prompt-completion form."""
    pairs = sft_conversations(tokenizer, shape.sft_samples + shape.sft_heldout, shape.seq_length, seed=1)
    files = {}
    for split, chosen in (("train", pairs[: shape.sft_samples]), ("heldout", pairs[shape.sft_samples :])):
        ours, trl = work / f"sft_{split}.jsonl", work / f"sft_{split}_trl.jsonl"
        with ours.open("w") as a, trl.open("w") as b:
            for question, answer in chosen:
                user, assistant = (
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                )
                a.write(json.dumps({"messages": [user, assistant]}) + "\n")
                b.write(json.dumps({"prompt": [user], "completion": [assistant]}) + "\n")
        files[split], files[f"{split}_trl"] = str(ours), str(trl)
    return files


def write_prompts(work: Path, count: int) -> str:
    """The first `count` bundled arithmetic prompts: with as many prompts per step, every step of both
    sides takes exactly these."""
    from xr_nemo.recipes.tiny_cpu import SAMPLE_PROMPTS

    path = work / "grpo_prompts.jsonl"
    path.write_text("".join(SAMPLE_PROMPTS.read_text().splitlines(keepends=True)[:count]))
    return str(path)


def build(work: Path, shape: Shape) -> dict[str, Any]:
    """The checkpoint (HF layout and its Megatron import, `grpo_step._build`), its causal-LM twin and the
    data; reused when `work` has them."""
    from grpo_step import Shape as GRPOShape
    from grpo_step import _build
    from transformers import AutoTokenizer

    grpo_shape = GRPOShape(
        shape.vocab, shape.spec, shape.prompts, shape.n, shape.new_tokens, shape.grpo_steps
    )
    hf_dir, checkpoint = _build(work, grpo_shape)
    lm_dir = causal_lm_twin(hf_dir, work / "causal_lm")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    parameters = sum(math.prod(shape) for shape in _safetensors_shapes(lm_dir / "model.safetensors"))
    return {
        "hf_dir": str(hf_dir),
        "checkpoint": str(checkpoint),
        "lm_dir": str(lm_dir),
        "parameters": parameters,
        "twin_max_logit_difference": twin_logits_difference(hf_dir, lm_dir),
        "prompts": write_prompts(work, shape.prompts),
        **write_sft_data(tokenizer, work, shape),
    }


def _safetensors_shapes(path: Path) -> list[list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return [handle.get_slice(name).get_shape() for name in handle.keys()]  # noqa: SIM118
