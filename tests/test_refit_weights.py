"""In-memory refit: the live model's weights, gathered over TP=2 or PP=2 and converted by the mapping
table, are exactly the Hugging Face tensors the model was loaded from — every language-model tensor,
no more, no less, on every rank."""

import pytest
import torch

from xr_nemo.distributed.local_launch import run_distributed

pytestmark = pytest.mark.slow


def refit_worker(hf_dir: str, checkpoint: str, tp: int, pp: int) -> dict[str, torch.Tensor]:
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.conversion.in_memory import hf_weights
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.qwen25_vl.model import Qwen25VLModel

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    initialize(parallel)
    model = Qwen25VLModel(AutoConfig.from_pretrained(hf_dir), parallel)
    load_model_weights(model, checkpoint)
    weights = {name: tensor.clone() for name, tensor in hf_weights(model)}
    shutdown()
    return weights


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)], ids=["single", "tp2", "pp2"])
def test_refit_weights_equal_the_hf_checkpoint(tmp_path, tp, pp, tied):
    from safetensors.torch import load_file

    from xr_nemo.conversion.convert import import_hf
    from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl

    hf_dir = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec(num_kv_heads=2, tie_word_embeddings=tied))
    checkpoint = import_hf(hf_dir, tmp_path / "megatron", progress=False)
    expected = {
        k: v for k, v in load_file(str(hf_dir / "model.safetensors")).items() if not k.startswith("visual.")
    }
    if tied:
        expected.pop("lm_head.weight", None)  # vLLM ties it to the embedding itself
    for rank_weights in run_distributed(refit_worker, tp * pp, str(hf_dir), str(checkpoint), tp, pp):
        assert sorted(rank_weights) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(rank_weights[name], tensor), name
