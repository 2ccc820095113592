"""Writing the user's files: atomic, with the umask's permissions, and no temporary left behind;
reading text files: UTF-8 with or without a byte order mark, anything else named."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from loratk.errors import DataError
from loratk.fileio import atomic_directory, atomic_write_text, decode_text, looks_like_local_path


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


@pytest.mark.parametrize("mask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640),
                                                          (0o077, 0o700, 0o600)])
def test_atomic_writes_get_the_permissions_the_umask_gives(mask, folder_mode, file_mode, tmp_path):
    with umask(mask):
        with atomic_directory(tmp_path / "out") as tmp:
            fd = os.open(tmp / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors does
            os.close(fd)
            (tmp / "config.json").write_text("{}")
        atomic_write_text(tmp_path / "run.yaml", "a: 1\n")
    assert modes(tmp_path / "out") == {"out": folder_mode, "weights.safetensors": file_mode, "config.json": file_mode}
    assert stat.S_IMODE((tmp_path / "run.yaml").stat().st_mode) == file_mode


def test_a_failed_swap_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as tmp:  # replace=False: the new folder may not replace it
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


def test_the_current_folder_is_written_by_its_absolute_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_directory("out") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "out" / "a").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("data, text", [(b'{"a": 1}', '{"a": 1}'), ('{"a": "é"}'.encode("utf-8-sig"), '{"a": "é"}')])
def test_utf8_with_or_without_a_byte_order_mark_reads(data, text):
    assert decode_text(data, "x.json") == text


@pytest.mark.parametrize("encoding, named", [("utf-16", "UTF-16 (it starts with"), ("utf-16-be", "UTF-16 big-endian"),
                                             ("utf-32", "UTF-32"), ("cp1252", "Windows-1252")])
def test_other_encodings_are_named_with_the_file(encoding, named):
    with pytest.raises(DataError) as error:
        decode_text('{"text": "naïve café"}'.encode(encoding), "data/x.json")
    assert "data/x.json" in error.value.message and named in error.value.message
    assert "iconv" in error.value.hint


def test_a_broken_link_is_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("gone", "mydata")
    assert looks_like_local_path("mydata") and not looks_like_local_path("owner/name")
