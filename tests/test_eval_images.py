"""Benchmark images: every way a record names one resolves to the right picture, and a missing, absent,
undecodable or truncated image is a clear error of its own kind; option lists in string form are read as
literals, never evaluated."""

import io

import pytest
from PIL import Image

from xr_nemo.data.records import Record
from xr_nemo.tasks.benchmark import image_list, option_list
from xr_nemo.tasks.images import MissingImage, UndecodableImage, image_source, load_image


def _png(colour, size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pil_bytes_and_relative_paths_resolve(tmp_path):
    (tmp_path / "release" / "images").mkdir(parents=True)
    (tmp_path / "release" / "images" / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "b.png").write_bytes(_png((0, 255, 0)))
    data_file = tmp_path / "release" / "questions" / "test.jsonl"
    data_file.parent.mkdir()
    record = Record(f"{data_file}:1", {}, data_file)
    pil = Image.new("L", (4, 4), 7)
    sources = image_list(
        record, [pil, {"bytes": _png((0, 0, 255)), "path": "x.png"}, "a.png", "../Images/b.png", None]
    )
    images = [load_image(source, record.where) for source in sources]
    assert [image.mode for image in images] == ["RGB"] * 4
    assert [image.getpixel((0, 0)) for image in images] == [(7, 7, 7), (0, 0, 255), (255, 0, 0), (0, 255, 0)]


def test_missing_absent_undecodable_and_truncated_images_are_errors_of_their_kind(tmp_path):
    where = "data.jsonl:3"
    with pytest.raises(MissingImage, match=r"gone\.png does not exist"):
        load_image(image_source("gone.png", tmp_path, where), where)
    with pytest.raises(MissingImage, match="names no image"):
        image_source("", tmp_path, where)
    (tmp_path / "junk.png").write_bytes(b"<html>not found</html>")
    with pytest.raises(UndecodableImage, match=r"junk\.png cannot be decoded") as caught:
        load_image(image_source("junk.png", tmp_path, where), where)
    assert caught.value.where == where
    truncated = _png((1, 2, 3), size=(64, 64))[:-40]
    with pytest.raises(UndecodableImage, match="embedded image bytes"):
        load_image(image_source({"bytes": truncated}, None, where), where)


def test_string_option_lists_are_literals_not_code():
    assert option_list("['1', '2 cm', \"it's\"]", "x") == ["1", "2 cm", "it's"]
    with pytest.raises(ValueError):
        option_list("__import__('os').system('echo hacked')", "x")


def test_hub_rows_name_images_only_with_bytes_or_absolute_paths(tmp_path):
    from xr_nemo.tasks.images import ImagesNotLocal

    where = "BoKelvin/SLAKE[test] row 0"
    with pytest.raises(ImagesNotLocal, match=r"'xmlab1/source\.jpg'.*no image bytes"):
        image_source("xmlab1/source.jpg", None, where)
    (tmp_path / "a.png").write_bytes(_png((9, 9, 9)))
    assert image_source(str(tmp_path / "a.png"), None, where) == tmp_path / "a.png"
    assert isinstance(image_source({"bytes": _png((1, 1, 1)), "path": "x.png"}, None, where), bytes)


def test_a_benchmark_may_name_its_own_image_folder(tmp_path):
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    (tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg").write_bytes(_png((4, 5, 6)))
    found = image_source("synpic1.jpg", tmp_path, "x", ("", "VQA_RAD Image Folder"))
    assert load_image(found, "x").getpixel((0, 0)) == (4, 5, 6)
    assert not image_source("synpic1.jpg", tmp_path, "x").exists()  # not among the default folders
