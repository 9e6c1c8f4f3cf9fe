"""Directories are replaced whole or not at all, and leave nothing behind."""

import pytest

from xr_nemo.io.atomic_dir import atomic_output_dir, move_into_place, write_text_atomically


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_failed_write_leaves_the_old_directory_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert _tree(tmp_path) == ["out", "out/old.txt"]


def test_move_into_place_replaces_an_existing_directory_whole(tmp_path):
    target, staging = tmp_path / "step_4", tmp_path / "step_4.tmp"
    target.mkdir()
    (target / "a").write_text("old")
    (target / "b").write_text("old")
    staging.mkdir()
    (staging / "a").write_text("new")
    move_into_place(staging, target)
    assert _tree(tmp_path) == ["step_4", "step_4/a"]
    assert (target / "a").read_text() == "new"
    fresh = tmp_path / "fresh.tmp"
    fresh.mkdir()
    move_into_place(fresh, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir() and not fresh.exists()


def _record_fsyncs_and_renames(monkeypatch) -> tuple[list[str], list[set[str]]]:
    """The paths fsync'ed, in order, and for each `os.replace` the set fsync'ed before it."""
    import os

    flushed, renamed_with = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        flushed.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    def replace(source, destination):
        renamed_with.append(set(flushed))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return flushed, renamed_with


def test_every_file_and_directory_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    flushed, renamed_with = _record_fsyncs_and_renames(monkeypatch)
    with atomic_output_dir(tmp_path / "out") as staging:
        (staging / "sub").mkdir()
        (staging / "a.bin").write_bytes(b"a")
        (staging / "sub" / "b.bin").write_bytes(b"b")
        written = {str(staging), str(staging / "sub"), str(staging / "a.bin"), str(staging / "sub" / "b.bin")}
    assert len(renamed_with) == 1 and written <= renamed_with[0]
    assert str(tmp_path) in flushed  # the rename itself
    assert _tree(tmp_path / "out") == ["a.bin", "sub", "sub/b.bin"]


def test_a_small_file_is_on_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    pointer = tmp_path / "latest"
    pointer.write_text("step_2\n")
    flushed, renamed_with = _record_fsyncs_and_renames(monkeypatch)
    write_text_atomically(pointer, "step_4\n")
    assert pointer.read_text() == "step_4\n"
    assert len(renamed_with) == 1 and any(".latest.tmp-" in path for path in renamed_with[0])
    assert flushed[-1] == str(tmp_path)
    assert _tree(tmp_path) == ["latest"]
