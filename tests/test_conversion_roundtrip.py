"""HF → megatron-core (re-saved by a TP=2 or PP=2 model, as training writes it) → HF is bit-exact, for
several shapes, both Qwen2.5-VL key namings and Qwen3-VL, and the exported directory gives Transformers
identical logits."""

import json

import pytest
import torch
from safetensors.torch import load_file

from xr_nemo.conversion.convert import export_hf, import_hf
from xr_nemo.conversion.hf_checkpoint import HFCheckpointReader
from xr_nemo.distributed.local_launch import run_distributed
from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl
from xr_nemo.models.registry import family_named

SPECS = {  # name: (family, tiny sizes, key naming, (TP, PP) the imported checkpoint is re-saved at)
    "gqa-untied-hub": ("qwen2_5_vl", dict(num_heads=4, num_kv_heads=2, hidden_size=256), "hub", (2, 1)),
    "mha-tied-transformers": (
        "qwen2_5_vl",
        dict(
            num_heads=4,
            num_kv_heads=4,
            hidden_size=256,
            tie_word_embeddings=True,
            vision_depth=3,
            fullatt_block_indexes=[2],
        ),
        "transformers",
        (2, 1),
    ),
    "8heads-2kv-4layers-hub": (
        "qwen2_5_vl",
        dict(
            num_heads=8,
            num_kv_heads=2,
            hidden_size=512,
            num_layers=4,
            vision_depth=1,
            fullatt_block_indexes=[0],
        ),
        "hub",
        (2, 1),
    ),
    "qwen3-gqa-untied-tp2": ("qwen3_vl", dict(num_heads=4, num_kv_heads=2, hidden_size=256), "hub", (2, 1)),
    "qwen3-mha-tied-pp2": (
        "qwen3_vl",
        dict(num_heads=2, num_kv_heads=2, tie_word_embeddings=True, deepstack_visual_indexes=[1]),
        "hub",
        (1, 2),
    ),
}


def _build(name: str, tmp_path):
    family, sizes, naming, _ = SPECS[name]
    return family_named(family).build_tiny(tmp_path / "hf", key_naming=naming, **sizes)


def resave_worker(checkpoint_dir: str, hf_dir: str, out_dir: str, layout: tuple[int, int]) -> None:
    from megatron.core import dist_checkpointing
    from transformers import AutoConfig

    from xr_nemo.config import ParallelConfig
    from xr_nemo.conversion.dist_checkpoint import load_model_weights
    from xr_nemo.distributed import initialize, shutdown
    from xr_nemo.models.registry import family_of

    parallel = ParallelConfig(tensor_parallel=layout[0], pipeline_parallel=layout[1])
    initialize(parallel)
    hf_config = AutoConfig.from_pretrained(hf_dir)
    model = family_of(hf_config).build_model(hf_config, parallel)
    load_model_weights(model, checkpoint_dir)
    dist_checkpointing.save(model.sharded_state_dict(), out_dir)
    shutdown()


def _tensors(directory) -> dict[str, torch.Tensor]:
    reader = HFCheckpointReader(directory)
    return {reader.tensors[name].key: reader.read(name) for name in reader.tensors}


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_through_a_parallel_layout_is_bit_exact(tmp_path, name):
    _, sizes, naming, layout = SPECS[name]
    source = _build(name, tmp_path)
    imported = import_hf(source, tmp_path / "imported", progress=False)
    resaved = tmp_path / "resaved"
    resaved.mkdir()
    run_distributed(resave_worker, layout[0] * layout[1], str(imported), str(source), str(resaved), layout)
    exported = export_hf(
        resaved, tmp_path / "exported", key_naming=naming, hf_files=imported / "hf", progress=False
    )
    original, result = _tensors(source), _tensors(exported)
    if sizes.get("tie_word_embeddings"):
        original.pop("lm_head.weight", None)
    assert set(result) == set(original)
    for key, tensor in original.items():
        assert result[key].dtype == tensor.dtype and torch.equal(result[key], tensor), key
    for side_file in ("config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (exported / side_file).read_bytes() == (source / side_file).read_bytes(), side_file


@pytest.mark.parametrize(
    "name, hub_prefixes",
    [
        # Qwen2.5-VL: Transformers' naming in, the hub's out
        ("mha-tied-transformers", ("model.layers.", "model.embed_tokens.", "model.norm.", "visual.")),
        ("qwen3-mha-tied-pp2", ("model.language_model.", "model.visual.")),
    ],
)
def test_export_loads_in_transformers_with_identical_logits(tmp_path, name, hub_prefixes):
    from helpers.vl_inputs import vl_batch

    family = family_named(SPECS[name][0])
    source = _build(name, tmp_path)
    exported = export_hf(
        import_hf(source, tmp_path / "imported", progress=False), tmp_path / "out", progress=False
    )
    stored = load_file(exported / "model.safetensors")
    assert all(key.startswith(hub_prefixes) for key in stored), sorted(stored)
    batch = vl_batch(source, [("Two images?", [(84, 56), (56, 56)]), ("Text only, longer question.", [])])
    with torch.no_grad():
        expected = family.hf_model_class.from_pretrained(source).eval()(**batch).logits
        got = family.hf_model_class.from_pretrained(exported).eval()(**batch).logits
    assert torch.equal(got, expected)


def test_sharded_export_with_index_imports_back(tmp_path):
    source = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec())
    imported = import_hf(source, tmp_path / "imported", progress=False)
    sharded = export_hf(imported, tmp_path / "sharded", max_shard_bytes=200_000, progress=False)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not list(sharded.glob("*.partial"))
    again = export_hf(
        import_hf(sharded, tmp_path / "again", progress=False), tmp_path / "single", progress=False
    )
    original, result = load_file(source / "model.safetensors"), load_file(again / "model.safetensors")
    assert set(original) == set(result) and all(torch.equal(original[k], result[k]) for k in original)


def test_dtype_override_casts_and_records_it(tmp_path):
    source = build_tiny_qwen25_vl(tmp_path / "hf", TinyQwen25VLSpec())
    imported = import_hf(source, tmp_path / "imported", dtype=torch.bfloat16, progress=False)
    exported = export_hf(imported, tmp_path / "out", dtype=torch.bfloat16, progress=False)
    original, result = load_file(source / "model.safetensors"), load_file(exported / "model.safetensors")
    assert all(
        result[k].dtype == torch.bfloat16 and torch.equal(result[k], original[k].bfloat16()) for k in original
    )
    assert json.loads((exported / "config.json").read_text())["dtype"] == "bfloat16"
