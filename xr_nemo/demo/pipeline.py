"""`xr-nemo demo`: the smallest real pipeline the project has, end to end, on CPU.

1. Build a tiny Qwen2.5-VL checkpoint in Hugging Face layout (offline; reused when present).
2. Load it with Transformers and read one image and one text prompt through it.
3. Train a tiny megatron-core GPT on a toy task at TP=1 and at TP=2 (two gloo processes) and compare
   the loss curves step for step.
4. Write `report.md` in the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from xr_nemo.config import ParallelConfig
from xr_nemo.demo import DEFAULT_STEPS
from xr_nemo.demo.parallel_training import train_worker
from xr_nemo.models.qwen25_vl.processing import expand_image_placeholders
from xr_nemo.testing.multiprocess import run_distributed
from xr_nemo.testing.qwen25_vl import build_tiny_qwen25_vl


def _checkpoint(run_dir: Path) -> tuple[Path, str]:
    model_dir = run_dir / "tiny-qwen25-vl"
    if (model_dir / "model.safetensors").exists():
        return model_dir, "reused"
    build_tiny_qwen25_vl(model_dir)
    return model_dir, "built"


def _read_image_and_text(model_dir: Path) -> tuple[int, int]:
    """Forward one image prompt and one text prompt; return the prompt lengths in tokens."""
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    pixels = processor(images=[Image.new("RGB", (112, 56), (255, 255, 255))], return_tensors="pt")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 12 + 35?"}]}
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = expand_image_placeholders(prompt, pixels["image_grid_thw"], processor.merge_size)
    image_ids = tokenizer(prompt, return_tensors="pt").input_ids
    text_ids = tokenizer("What is 12 + 35?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=image_ids, **pixels).logits).all()
        assert torch.isfinite(model(input_ids=text_ids).logits).all()
    return image_ids.shape[1], text_ids.shape[1]


def run_demo(run_dir: str | Path = "runs/demo", steps: int = DEFAULT_STEPS, seed: int = 1234) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    model_dir, how = _checkpoint(run_dir)
    image_tokens, text_tokens = _read_image_and_text(model_dir)
    timings["tiny Qwen2.5-VL checkpoint"] = time.perf_counter() - start
    print(
        f"[demo] tiny Qwen2.5-VL checkpoint {how}: {model_dir} "
        f"(image prompt {image_tokens} tokens, text prompt {text_tokens} tokens)"
    )

    start = time.perf_counter()
    single = run_distributed(train_worker, 1, ParallelConfig(), steps, seed)[0]
    timings["train TP=1 (1 process)"] = time.perf_counter() - start
    start = time.perf_counter()
    tensor_parallel = run_distributed(train_worker, 2, ParallelConfig(tensor_parallel=2), steps, seed)[0]
    timings["train TP=2 (2 processes)"] = time.perf_counter() - start
    worst = max(abs(a - b) for a, b in zip(single, tensor_parallel, strict=True))
    print(
        f"[demo] loss {single[0]:.4f} → {single[-1]:.4f} over {steps} steps; "
        f"TP=2 vs TP=1 max |Δloss| = {worst:.2e}"
    )

    report = run_dir / "report.md"
    lines = [
        "# xr-nemo demo",
        "",
        f"Tiny Qwen2.5-VL checkpoint ({how}): `{model_dir}` — read one image prompt ({image_tokens} tokens) "
        f"and one text prompt ({text_tokens} tokens) through Transformers.",
        "",
        f"Tiny megatron-core GPT, counting task, {steps} Adam steps, fp32 on CPU:",
        "",
        "| step | loss TP=1 | loss TP=2 |",
        "|---:|---:|---:|",
        *[
            f"| {i} | {a:.6f} | {b:.6f} |"
            for i, (a, b) in enumerate(zip(single, tensor_parallel, strict=True))
            if i % 5 == 0 or i == steps - 1
        ],
        "",
        f"Largest difference between the two curves: {worst:.2e}.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()],
        "",
    ]
    report.write_text("\n".join(lines))
    print(f"[demo] report: {report}")
    return report
