"""Conversion refuses bad input with a message naming the file or tensor, and never leaves a
half-written output or damages an existing one."""

import json
import re

import pytest

from xr_nemo.cli import main
from xr_nemo.conversion.convert import export_hf, import_hf
from xr_nemo.conversion.hf_checkpoint import ConversionError, HFCheckpointReader
from xr_nemo.errors import XrNemoError
from xr_nemo.models.qwen25_vl.tiny import TinyQwen25VLSpec, build_tiny_qwen25_vl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("errors") / "hf", TinyQwen25VLSpec())


def _copy(source, destination):
    destination.mkdir()
    for file in source.iterdir():
        (destination / file.name).write_bytes(file.read_bytes())
    return destination


def test_missing_shard_is_named(tmp_path, tiny):
    imported = import_hf(tiny, tmp_path / "imported", progress=False)
    sharded = export_hf(imported, tmp_path / "sharded", max_shard_bytes=200_000, progress=False)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    with pytest.raises(ConversionError, match=re.escape(shards[1].name)):
        import_hf(sharded, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_shard_is_reported_as_corrupt(tmp_path, tiny):
    broken = _copy(tiny, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ConversionError, match="truncated or corrupt") as error:
        import_hf(broken, tmp_path / "out", progress=False)
    assert str(weights) in str(error.value)


def test_shape_mismatch_names_the_tensor(tmp_path, tiny):
    wrong = _copy(tiny, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight has shape"):
        import_hf(wrong, tmp_path / "out", progress=False)


def test_export_with_another_config_names_the_tensor_whose_shape_differs(tmp_path, tiny):
    imported = import_hf(tiny, tmp_path / "imported", progress=False)
    wrong = _copy(imported / "hf", tmp_path / "wrong-config")
    config = json.loads((wrong / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(XrNemoError, match=r"other shapes in the checkpoint .*mlp\.linear_fc1\.weight"):
        export_hf(imported, tmp_path / "out", hf_files=wrong, progress=False)
    assert not (tmp_path / "out").exists()


def test_pickled_weights_are_never_loaded(tmp_path, tiny):
    pickled = _copy(tiny, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="pickled weights are never loaded"):
        HFCheckpointReader(pickled)


def test_unsupported_architecture_exits_2_with_a_message(tmp_path, tiny, capsys):
    other = _copy(tiny, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["Qwen2_5_VLForSomethingElse"]
    (other / "config.json").write_text(json.dumps(config))
    assert main(["convert", "import", str(other), str(tmp_path / "out")]) == 2
    assert "unsupported architecture" in capsys.readouterr().err


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path, tiny):
    out = import_hf(tiny, tmp_path / "out", progress=False)
    with pytest.raises(XrNemoError, match="already exists"):
        import_hf(tiny, out, progress=False)
    import_hf(tiny, out, overwrite=True, progress=False)
    assert (out / "metadata.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_mid_write_keeps_the_old_output_and_leaves_no_partial_one(tmp_path, tiny, monkeypatch):
    out = import_hf(tiny, tmp_path / "out", progress=False)
    before = sorted(p.name for p in out.iterdir())
    reads = []

    def failing_read(self, name):
        reads.append(name)
        if len(reads) > 5:
            raise OSError("disk vanished")
        return original_read(self, name)

    original_read = HFCheckpointReader.read
    monkeypatch.setattr(HFCheckpointReader, "read", failing_read)
    with pytest.raises(Exception, match="disk vanished"):
        import_hf(tiny, out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
