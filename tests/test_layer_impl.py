"""The layer implementation: `model.transformer_impl` resolves per machine and refuses what it cannot
run (Transformer Engine without TE or CUDA, FP8 without TE or on a GPU too old for the recipe); the
Transformer Engine spec declares the same checkpoint keys as the local one and its parameters convert
to the same Hugging Face tensors; packed batches reach TE as THD.

TE need not be installed: its spec is built from megatron-core's own spec function, with TE's modules or,
without TE, the stand-ins megatron-core defines under the same names, and each module's checkpointed names
come from TE's parameter naming (`weight`, `bias`, `layer_norm_weight` of LayerNormLinear, `_extra_state`).
The same walk over the local spec must give the local model's real keys, which checks the walk itself.

What the machine has (CUDA, TE, a GPU generation, CUDA version) is simulated in each test that depends on
it, so the tests check the same thing with or without CUDA and TE."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from types import SimpleNamespace

import pytest
import torch
from megatron.core.extensions import transformer_engine as te_modules
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from xr_nemo.config.overrides import apply_overrides
from xr_nemo.config.schema import ModelConfig, SFTConfig, TransformerImpl
from xr_nemo.errors import ConfigError, XrNemoError
from xr_nemo.models import layer_settings, te_probe
from xr_nemo.models.layer_settings import LayerSettings, resolve_layer_settings
from xr_nemo.models.mapping import find_mapping
from xr_nemo.models.norms import Norm
from xr_nemo.models.qwen3_vl import tiny as qwen3_vl_tiny
from xr_nemo.models.qwen25_vl import tiny as qwen25_vl_tiny
from xr_nemo.models.qwen25_vl.config import language_model_config
from xr_nemo.models.registry import family_of
from xr_nemo.models.specs import local_block_spec, packed_seq_params_for, te_block_spec

SPECIAL = ["<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>"]
LAYERS = "language_model.decoder.layers."


def _hf_config(family: str = "qwen2_5_vl"):
    """A two-layer tiny config of `family` (Qwen3-VL's has qk-norm and no q/k/v biases)."""
    ids = {token: i for i, token in enumerate([*SPECIAL, "<|vision_end|>"])}
    if family == "qwen3_vl":
        return qwen3_vl_tiny.tiny_config(qwen3_vl_tiny.TinyQwen3VLSpec(num_layers=2), 512, ids)
    return qwen25_vl_tiny.tiny_config(qwen25_vl_tiny.TinyQwen25VLSpec(num_layers=2), 512, ids)


FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture
def one_process():
    """megatron-core's parallel state of one process: specs read the pipeline layout."""
    from xr_nemo.config import ParallelConfig
    from xr_nemo.distributed import initialize, shutdown

    initialize(ParallelConfig())
    yield
    shutdown()


@pytest.fixture
def te_importable(monkeypatch):
    """Let megatron-core's TE spec function run without TE (it only reads TE's version)."""
    from megatron.core.extensions import transformer_engine_spec_provider as provider
    from megatron.core.models.gpt import gpt_layer_specs

    monkeypatch.setattr(provider, "is_te_min_version", lambda *args, **kwargs: True)
    monkeypatch.setattr(gpt_layer_specs, "TESpecProvider", provider.TESpecProvider, raising=False)


BROKEN_TE = te_probe.TEProbe(
    "/site-packages/transformer_engine/__init__.py",
    "OSError: libtransformer_engine.so: undefined symbol: _ZN3c104cuda9SetDevice",
)


@pytest.fixture
def machine(monkeypatch):
    """Simulate this machine: `machine(cuda=..., te=...)`, `te` a TEProbe (default: not installed)."""
    monkeypatch.setattr(layer_settings, "_warned", set())

    def simulate(cuda: bool, te: te_probe.TEProbe | None = None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(te_probe, "probe", lambda: te or te_probe.TEProbe(None))

    return simulate


@pytest.fixture
def te_gpu(monkeypatch):
    """A machine where TE imports, CUDA (12.9) is present, and the GPU is of `capability` (set by the
    test)."""
    monkeypatch.setattr(layer_settings, "why_not_transformer_engine", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Test GPU")
    monkeypatch.setattr(torch.version, "cuda", "12.9")

    def capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (major, minor))

    return capability


# ── what each module checkpoints ─────────────────────────────────────────────────────────────────────

LINEARS = {
    ColumnParallelLinear,
    RowParallelLinear,
    te_modules.TEColumnParallelLinear,
    te_modules.TERowParallelLinear,
    te_modules.TELayerNormColumnParallelLinear,
}


def _state_names(module: object, path: str, config) -> list[str]:
    """Checkpointed names of one module of a layer spec: TE names its fused norm `layer_norm_weight`;
    every linear layer, local or TE, carries `_extra_state` (TE's FP8 metadata; None for local)."""
    if path.endswith("core_attention"):  # local attention has no state; megatron-core leaves TE's out
        return []
    if module in (IdentityOp, IdentityFuncOp, None) or inspect.isfunction(module):
        return []
    if module in (Norm, te_modules.TENorm):  # TE's norm: the query and key heads' (qk-norm)
        return ["weight"] + (["bias"] if config.normalization == "LayerNorm" else [])
    if module in LINEARS:
        bias = config.add_bias_linear or (path.endswith("linear_qkv") and config.add_qkv_bias)
        names = ["weight", "_extra_state"] + (["bias"] if bias else [])
        if module is te_modules.TELayerNormColumnParallelLinear:
            names += ["layer_norm_weight"] + (
                ["layer_norm_bias"] if config.normalization == "LayerNorm" else []
            )
        return names
    raise AssertionError(f"unknown module {module!r} at {path}: say what it checkpoints")


def _leaves(submodules: object, prefix: str = ""):
    for field in dataclasses.fields(submodules):
        if field.name == "sharded_state_dict_keys_map":
            continue
        value, path = getattr(submodules, field.name), prefix + field.name
        if isinstance(value, ModuleSpec) and value.submodules is not None:
            yield from _leaves(value.submodules, path + ".")
        else:
            yield path, value.module if isinstance(value, ModuleSpec) else value


def _layer_names(layer: ModuleSpec, config, mapped: bool = True) -> set[str]:
    """A layer's checkpoint names, renamed by its `sharded_state_dict_keys_map` as megatron-core does."""
    names = {
        f"{path}.{name}"
        for path, module in _leaves(layer.submodules)
        for name in _state_names(module, path, config)
    }
    renames = layer.submodules.sharded_state_dict_keys_map if mapped else {}
    for old, new in renames.items():
        names = {new + name[len(old) :] if name.startswith(old) else name for name in names}
    return names


def _checkpoint_keys(block: ModuleSpec, config, outside_layers: set[str], mapped: bool = True) -> set[str]:
    """Checkpoint keys of the language model built from `block` (layers stacked: no layer number)."""
    (layer,) = {id(spec): spec for spec in block.submodules.layer_specs}.values()
    final = {
        f"language_model.decoder.final_layernorm.{n}"
        for n in _state_names(block.submodules.layer_norm, "", config)
    }
    return outside_layers | final | {LAYERS + name for name in _layer_names(layer, config, mapped)}


def _local_model_keys(hf_config) -> set[str]:
    from xr_nemo.conversion.dist_checkpoint import checkpoint_layout

    with checkpoint_layout(hf_config, torch.float32) as layout:
        return {entry.key for name, entry in layout.items() if not name.startswith("visual.")}


# ── checkpoint keys and conversion ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("family", FAMILIES)
def test_te_spec_declares_the_checkpoint_keys_of_the_local_model(one_process, te_importable, family):
    hf_config = _hf_config(family)
    local_keys = _local_model_keys(hf_config)
    outside = {key for key in local_keys if not key.startswith((LAYERS, "language_model.decoder.final_"))}
    config_of = family_of(hf_config).language_model_config
    local_config, _ = config_of(hf_config)
    te_config, _ = config_of(hf_config, layers=LayerSettings(TransformerImpl.transformer_engine))

    # the walk reproduces the real local model's keys, so it can be trusted on the TE spec
    assert _checkpoint_keys(local_block_spec(local_config), local_config, outside) == local_keys
    te_keys = _checkpoint_keys(te_block_spec(te_config), te_config, outside)
    assert te_keys == local_keys
    assert LAYERS + "self_attention.linear_qkv.layer_norm_weight" in te_keys
    # it is the local layer's renaming of its norms that makes them equal
    unmapped = _checkpoint_keys(local_block_spec(local_config), local_config, outside, mapped=False)
    assert unmapped != te_keys


@pytest.mark.parametrize("family", FAMILIES)
def test_te_parameters_convert_to_the_same_hf_tensors(one_process, te_importable, family):
    from xr_nemo.conversion.hf_checkpoint import expected_hf_shapes

    hf_config = _hf_config(family)
    bundle = family_of(hf_config)
    te_config, _ = bundle.language_model_config(
        hf_config, layers=LayerSettings(TransformerImpl.transformer_engine)
    )
    local_config, _ = bundle.language_model_config(hf_config)

    def hf_names(block: ModuleSpec, config) -> set[str]:
        """HF tensors made from the layers' parameters, named as the built model names them."""
        names = set()
        for number, layer in enumerate(block.submodules.layer_specs):
            for name in _layer_names(layer, config, mapped=False):
                if not name.endswith("_extra_state"):
                    mapping, wildcard = find_mapping(f"{LAYERS}{number}.{name}", bundle.mappings)
                    names |= set(mapping.resolve(wildcard)[1])
        return names

    te_names = hf_names(te_block_spec(te_config), te_config)
    assert te_names == hf_names(local_block_spec(local_config), local_config)
    # every tensor of Transformers' decoder layers, norms fused into TE's linear layers included
    layer_tensors = {
        name for name in expected_hf_shapes(hf_config) if isinstance(bundle.tensor_part(name), int)
    }
    assert te_names == layer_tensors


def test_te_layer_settings_are_accepted_by_megatron_core():
    settings = LayerSettings(TransformerImpl.transformer_engine, fp8="hybrid", recompute="selective")
    config, _ = language_model_config(_hf_config(), layers=settings)
    assert config.transformer_impl == "transformer_engine"
    assert config.bias_activation_fusion and not config.apply_rope_fusion  # mrope stays unfused
    assert (config.fp8, config.fp8_recipe, config.fp8_amax_history_len) == ("hybrid", "delayed", 1024)
    assert config.cp_comm_type == "p2p"
    assert config.recompute_granularity == "selective"
    local, _ = language_model_config(_hf_config())
    assert local.transformer_impl == "local" and not local.bias_activation_fusion and local.fp8 is None


# ── choosing the implementation ──────────────────────────────────────────────────────────────────────


def test_auto_is_local_without_cuda_and_te_where_it_runs(monkeypatch):
    monkeypatch.setattr(layer_settings, "why_not_transformer_engine", lambda: "CUDA is not available")
    assert resolve_layer_settings(ModelConfig()).impl == TransformerImpl.local
    monkeypatch.setattr(layer_settings, "why_not_transformer_engine", lambda: None)
    assert resolve_layer_settings(ModelConfig()).impl == TransformerImpl.transformer_engine


def test_transformer_engine_without_it_says_what_to_do(machine):
    asked = ModelConfig(transformer_impl=TransformerImpl.transformer_engine)
    machine(cuda=False)
    with pytest.raises(ConfigError) as error:
        resolve_layer_settings(asked)
    message = str(error.value)
    assert "CUDA is not available" in message and "transformer_engine is not installed" in message
    assert "make setup-gpu" in message and "model.transformer_impl=local" in message
    machine(cuda=True)
    with pytest.raises(ConfigError, match="transformer_engine is not installed") as error:
        resolve_layer_settings(asked)
    assert "CUDA" not in str(error.value).splitlines()[0]


def test_a_broken_transformer_engine_is_refused_with_its_own_error(machine):
    machine(cuda=True, te=BROKEN_TE)
    with pytest.raises(ConfigError) as error:
        resolve_layer_settings(ModelConfig(transformer_impl=TransformerImpl.transformer_engine))
    message = str(error.value)
    assert "is installed (/site-packages/transformer_engine/__init__.py) but does not import" in message
    assert "OSError: libtransformer_engine.so: undefined symbol" in message
    assert "reinstall Transformer Engine" in message and "model.transformer_impl=local" in message


def test_auto_builds_local_layers_past_a_broken_transformer_engine_and_says_why(machine):
    machine(cuda=True, te=BROKEN_TE)
    with pytest.warns(UserWarning, match=r"auto builds the local layers: .*OSError: libtransformer_engine"):
        assert resolve_layer_settings(ModelConfig()).impl == TransformerImpl.local
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not once per model
        assert resolve_layer_settings(ModelConfig()).impl == TransformerImpl.local
        machine(cuda=True, te=te_probe.TEProbe(None))  # TE absent, not broken: nothing to say
        layer_settings._warned.clear()
        assert resolve_layer_settings(ModelConfig()).impl == TransformerImpl.local


def test_fp8_needs_transformer_engine_layers(machine):
    machine(cuda=False)
    with pytest.raises(ConfigError, match=r"model\.fp8 needs Transformer Engine layers") as error:
        resolve_layer_settings(ModelConfig(fp8="hybrid"))
    assert "CUDA is not available" in str(error.value) and "model.fp8=null" in str(error.value)
    machine(cuda=True, te=BROKEN_TE)
    with (
        pytest.raises(ConfigError, match="OSError: libtransformer_engine") as error,
        pytest.warns(UserWarning),
    ):
        resolve_layer_settings(ModelConfig(fp8="hybrid"))
    assert "reinstall Transformer Engine" in str(error.value)


def test_fp8_on_local_layers_is_refused_where_te_runs(te_gpu):
    te_gpu(9, 0)
    with pytest.raises(ConfigError, match=r"these are local: model\.transformer_impl=local"):
        resolve_layer_settings(ModelConfig(fp8="hybrid", transformer_impl="local"))


@pytest.mark.parametrize(
    ("recipe", "refused_on", "accepted_on"),
    [
        ("delayed", (8, 6), (8, 9)),
        ("tensorwise", (8, 0), (9, 0)),
        ("blockwise", (8, 9), (9, 0)),
        ("mxfp8", (9, 0), (10, 0)),
    ],
)
def test_fp8_recipes_need_their_gpu_generation(te_gpu, recipe, refused_on, accepted_on):
    model = ModelConfig(fp8="e4m3", fp8_recipe=recipe)
    te_gpu(*refused_on)
    with pytest.raises(ConfigError, match=rf"model\.fp8_recipe={recipe} needs a GPU of compute capability"):
        resolve_layer_settings(model)
    te_gpu(*accepted_on)
    settings = resolve_layer_settings(model)
    assert (settings.fp8, settings.fp8_recipe) == ("e4m3", recipe)


def test_a_hopper_refused_mxfp8_is_offered_the_recipes_it_runs(te_gpu):
    te_gpu(9, 0)
    with pytest.raises(ConfigError, match="Blackwell") as error:
        resolve_layer_settings(ModelConfig(fp8="hybrid", fp8_recipe="mxfp8"))
    assert "delayed, tensorwise, blockwise" in str(error.value)


def test_mxfp8_is_refused_on_the_blackwells_te_has_no_mxfp8_gemms_for(te_gpu):
    te_gpu(12, 0)
    with pytest.raises(ConfigError, match=r"compute capability 10\.0 or newer, below 12\.0") as error:
        resolve_layer_settings(ModelConfig(fp8="hybrid", fp8_recipe="mxfp8"))
    assert "Test GPU is 12.0" in str(error.value) and "delayed, tensorwise, blockwise" in str(error.value)
    te_gpu(10, 3)
    assert resolve_layer_settings(ModelConfig(fp8="hybrid", fp8_recipe="mxfp8")).fp8_recipe == "mxfp8"


def test_blockwise_needs_cuda_12_9(te_gpu, monkeypatch):
    te_gpu(9, 0)
    model = ModelConfig(fp8="hybrid", fp8_recipe="blockwise")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(
        ConfigError, match=r"needs CUDA 12\.9 or newer; this torch is built for CUDA 12\.8"
    ) as error:
        resolve_layer_settings(model)
    assert "choose model.fp8_recipe from delayed, tensorwise, or set model.fp8=null" in str(error.value)
    for accepted in ("12.9", "13.0"):
        monkeypatch.setattr(torch.version, "cuda", accepted)
        assert resolve_layer_settings(model).fp8_recipe == "blockwise"
    monkeypatch.setattr(torch.version, "cuda", None)  # a ROCm build: TE decides
    assert resolve_layer_settings(model).fp8_recipe == "blockwise"


def test_overrides_refuse_unknown_choices():
    required = ["model.hf_dir=model", "data.train=data.jsonl"]
    config = apply_overrides(SFTConfig(), [*required, "model.transformer_impl=local", "model.recompute=full"])
    assert (config.model.transformer_impl, config.model.recompute) == ("local", "full")
    config = apply_overrides(
        SFTConfig(), [*required, "model.fp8_format=hybrid", "model.recompute_granularity=selective"]
    )
    assert (config.model.fp8, config.model.recompute) == ("hybrid", "selective")  # megatron-core's names
    for override in ("model.fp8=e5m2", "model.fp8_recipe=custom", "model.transformer_impl=te"):
        with pytest.raises(ConfigError, match="invalid value"):
            apply_overrides(SFTConfig(), [*required, override])


# ── packed batches ───────────────────────────────────────────────────────────────────────────────────


def _packed(ends: list[int]) -> PackedSeqParams:
    bounds = torch.tensor([0, *ends], dtype=torch.int32)
    return PackedSeqParams(cu_seqlens_q=bounds, cu_seqlens_kv=bounds, max_seqlen_q=8, max_seqlen_kv=8)


def _model_config(impl: str, context_parallel: int = 1) -> SimpleNamespace:
    """What `packed_seq_params_for` reads of a TransformerConfig."""
    return SimpleNamespace(transformer_impl=impl, context_parallel_size=context_parallel)


def test_packed_batches_reach_te_as_thd_spanning_the_row():
    te = _model_config("transformer_engine")
    params = packed_seq_params_for(te, _packed([5, 12]), batch_size=1, seq_length=16)
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.tolist() == [0, 5, 12]  # the sequences themselves
    assert params.cu_seqlens_q_padded.tolist() == [0, 5, 16]  # the last one's room takes the padding
    packed = _packed([5, 12])
    assert packed_seq_params_for(_model_config("local"), packed, batch_size=2, seq_length=16) is packed
    assert packed_seq_params_for(te, None, batch_size=4, seq_length=16) is None


def test_te_refuses_packed_batches_it_cannot_take():
    with pytest.raises(XrNemoError, match="one row per micro-batch"):
        packed_seq_params_for(_model_config("transformer_engine"), _packed([16]), batch_size=2, seq_length=8)
    with pytest.raises(XrNemoError, match="context parallelism"):
        packed_seq_params_for(
            _model_config("transformer_engine", 2), _packed([16]), batch_size=1, seq_length=16
        )
