"""Qwen3-VL end to end on its tiny model, through the same commands as Qwen2.5-VL: SFT and GRPO (vLLM
rollouts) each continue exactly after kill -9 and `trainer.resume=auto`, the SFT export loads in
Transformers and carries the training, and `xr-nemo eval` exports the GRPO run and scores it on a text
benchmark (vLLM) and an image benchmark (Transformers)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import processes
from helpers.eval_fixtures import write_fixtures

pytestmark = pytest.mark.slow

QUESTION, ANSWER = "What is 2 + 3?", "5"
TARGET = f"<think>Add.</think><answer>{ANSWER}</answer>"


def _chat(prompt: str, response: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": prompt}]
    return messages + ([{"role": "assistant", "content": response}] if response is not None else [])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny Qwen3-VL, its imported checkpoint and the training data, and the SFT overrides."""
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.registry import family_named

    root = tmp_path_factory.mktemp("qwen3_vl")
    hf_dir = family_named("qwen3_vl").build_tiny(root / "hf", num_kv_heads=2)
    checkpoint = import_hf(hf_dir, root / "megatron", progress=False)
    sample = json.dumps({"messages": _chat(QUESTION, TARGET)}) + "\n"
    (root / "sft.jsonl").write_text(sample * 32)
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": QUESTION, "answer": ANSWER}) + "\n" for _ in range(16))
    )
    sft = [
        f"model.hf_dir={hf_dir}",
        f"model.checkpoint={checkpoint}",
        f"data.train={root / 'sft.jsonl'}",
        "data.packing=false",
        "trainer.global_batch_size=8",
        "trainer.max_steps=6",
        "optim.lr=1e-3",
        "scheduler.name=constant",
        "checkpoint.every_steps=2",
        "export.hf=true",
        "trainer.progress=false",
    ]
    return root, sft


def _command(stage: str, run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "xr_nemo.cli", stage, f"run.dir={run_dir}", *overrides]


def _kill_9_at_step_2_then_resume(stage: str, run_dir: Path, overrides: list[str]) -> None:
    """Start the run, kill -9 it (and its helpers) once its step-2 checkpoint is written, resume it."""
    from xr_nemo.training.metrics import read_metrics

    victim = processes.start(
        _command(stage, run_dir, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step_2").exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before step 2"
        time.sleep(0.05)
    processes.end_group(victim)
    victim.wait()
    assert len(read_metrics(run_dir)) < 4
    _run(stage, run_dir, [*overrides, "trainer.resume=auto"])


def _run(stage: str, run_dir: Path, overrides: list[str]) -> None:
    result = subprocess.run(_command(stage, run_dir, overrides), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def sft_whole(model) -> Path:
    root, sft = model
    _run("sft", root / "sft-whole", sft)
    return root / "sft-whole"


def _sequence_loss(model_dir: Path) -> float:
    """Transformers' mean loss on the SFT sample's response tokens, for the checkpoint in `model_dir`."""
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(_chat(QUESTION), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt + TARGET + "<|im_end|>", add_special_tokens=False)["input_ids"]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()


def test_sft_resumes_exactly_after_kill_9_and_its_export_carries_the_training(model, sft_whole):
    from xr_nemo.training.metrics import read_metrics

    root, sft = model
    _kill_9_at_step_2_then_resume("sft", root / "sft-killed", sft)
    whole = [row["loss"] for row in read_metrics(sft_whole)]
    assert len(whole) == 6
    assert [row["loss"] for row in read_metrics(root / "sft-killed")] == whole
    assert _sequence_loss(sft_whole / "hf") < 0.8 * _sequence_loss(root / "hf")  # 6 steps: 6.2 → 4.7


def _grpo(root: Path, sft_whole: Path) -> list[str]:
    return [
        f"init.checkpoint={sft_whole}",
        f"data.train={root / 'prompts.jsonl'}",
        "rollout.engine=vllm",
        "trainer.prompts_per_step=4",
        "trainer.epochs=1",
        "rollout.n=4",
        "rollout.max_new_tokens=16",
        "checkpoint.every_steps=2",
        "trainer.progress=false",
    ]


@pytest.mark.vllm
def test_grpo_with_vllm_rollouts_resumes_exactly_after_kill_9_and_eval_scores_it(model, sft_whole, tmp_path):
    pytest.importorskip("vllm")
    from xr_nemo.training.metrics import read_metrics

    root, _ = model
    grpo = _grpo(root, sft_whole)
    _run("grpo", root / "grpo-whole", grpo)
    _kill_9_at_step_2_then_resume("grpo", root / "grpo-killed", grpo)
    keys = ("reward_mean", "loss", "kl", "entropy", "response_length", "prompt_cursor", "grad_norm")
    whole = [[row[k] for k in keys] for row in read_metrics(root / "grpo-whole")]
    assert len(whole) == 4
    assert [[row[k] for k in keys] for row in read_metrics(root / "grpo-killed")] == whole
    assert max(row["logprob_mismatch"] for row in read_metrics(root / "grpo-whole")) < 1e-4

    paths, _ = write_fixtures(tmp_path / "data", ["gsm8k", "vqa_rad"])
    # the run directory: eval exports its latest checkpoint first
    command = [sys.executable, "-m", "xr_nemo.cli", "eval", "--model", str(root / "grpo-whole")]
    command += ["--benchmarks", "gsm8k,vqa_rad", *(f"+data.{name}={path}" for name, path in paths.items())]
    command += ["max_new_tokens=8", "limit=2", "kv_cache_gib=0.25", f"out_dir={tmp_path / 'eval'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {name: row["n"] for name, row in summary["benchmarks"].items()} == {"gsm8k": 2, "vqa_rad": 2}
