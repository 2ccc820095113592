"""Which checkpoints are trusted: complete ones whose files still read back whole."""

from __future__ import annotations

import json
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from loratk.engine.training.checkpoints import (COMPLETE_MARKER, checkpoint_problem, newest_intact_checkpoint,
                                                set_aside)


def make_checkpoint(root, step, sizes=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    save_file({"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}, folder / "adapter_model.safetensors")
    torch.save({"state": {0: torch.ones(32)}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    files = {p.name: p.stat().st_size for p in folder.iterdir()} if sizes else {}
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": files}))
    return folder


def test_an_intact_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(make_checkpoint(tmp_path, 5)) is None


@pytest.mark.parametrize("sizes", [True, False], ids=["recorded sizes", "older marker without sizes"])
@pytest.mark.parametrize("name,expected", [("adapter_model.safetensors", "adapter_model.safetensors is"),
                                           ("optimizer.pt", "optimizer.pt is"),
                                           ("trainer_state.json", "trainer_state.json is")])
def test_a_truncated_file_is_named(name, expected, sizes, tmp_path):
    folder = make_checkpoint(tmp_path, 5, sizes)
    path = folder / name
    path.write_bytes(path.read_bytes()[:-7])
    assert checkpoint_problem(folder).startswith(expected)


def test_a_same_size_corruption_is_found_by_the_files_own_checks(tmp_path):
    folder = make_checkpoint(tmp_path, 5)
    path = folder / "optimizer.pt"
    with zipfile.ZipFile(path) as archive:  # flip a byte of the stored tensor itself
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    data[entry.header_offset + 30 + name_length + extra_length + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "optimizer.pt is damaged" in checkpoint_problem(folder)


def test_newest_intact_skips_damaged_and_incomplete_ones(tmp_path):
    make_checkpoint(tmp_path, 5)
    damaged = make_checkpoint(tmp_path, 10)
    (damaged / "adapter_model.safetensors").write_bytes(b"\x00" * 3)
    (tmp_path / "checkpoint-15").mkdir()  # half-written: no marker
    intact, skipped = newest_intact_checkpoint(tmp_path)
    assert intact == tmp_path / "checkpoint-5"
    assert [(p.name, problem.split()[0]) for p, problem in skipped] == [("checkpoint-10", "adapter_model.safetensors")]
    moved = set_aside(damaged)
    assert moved.name == "damaged-checkpoint-10" and (moved / "adapter_model.safetensors").is_file()
    assert newest_intact_checkpoint(tmp_path) == (tmp_path / "checkpoint-5", [])
