"""Faults in the files loratk reads outside checkpoints, and outputs that overlap inputs.

Truncated, corrupted, foreign-encoded or code-carrying data files, adapter folders, model configs,
tokenizer files and weights; read-only data; broken links; merge outputs that are, hold or sit in
an input. For each: one line on stderr naming the file and the next step, the exit code of a user
error, and every byte the user had still there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from loratk.testing import run_cli
from tests.engine.models.test_adapters import make_adapter

ROWS = [{"text": f"example number {i} about the sea"} for i in range(8)]


@pytest.fixture(autouse=True)
def own_data_cache(tmp_path_factory, monkeypatch):
    """A cache of tokenized data per test: a hit from an earlier run must not hide how a file reads."""
    monkeypatch.setenv("LORATK_DATA_CACHE", str(tmp_path_factory.mktemp("data-cache")))


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (links as their target's name) and its bytes."""
    found: dict[str, bytes] = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]:
            if path.is_symlink():
                found[str(path)] = os.readlink(path).encode()
            elif path.is_file():
                found[str(path)] = path.read_bytes()
            elif path.is_dir():
                found[str(path)] = b"<dir>"
    return found


def one_error_line(result, exit_code: int, *fragments: str) -> str:
    """The run failed with ``exit_code`` and a single "Error: ... Hint: ..." line holding ``fragments``."""
    assert result.exit_code == exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    line = errors[0]
    assert "unexpected" not in line and "Hint: " in line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


def cut_in_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory, tiny_model):
    """A fresh copy of the tiny model per call, to damage."""
    def copy(where: Path) -> Path:
        return Path(shutil.copytree(tiny_model, where))
    return copy


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("file-faults") / "run" / "final", 3, dropout=0.05)


# -- data files -------------------------------------------------------------------------------

def jsonl(rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


DAMAGED_DATA = {
    "truncated.jsonl": (jsonl(ROWS)[:-20].encode(), ["line 8 is not valid JSON", "column"]),
    "truncated.json": (json.dumps(ROWS, indent=1)[:200].encode(), ["is not valid JSON", "at line"]),
    "control.jsonl": (b'{"text": "a\x01b"}\n', ["Invalid control character at column"]),
    "utf16.jsonl": (jsonl(ROWS).encode("utf-16"), ["UTF-16", "iconv -f UTF-16"]),
    "utf16le.json": (json.dumps(ROWS).encode("utf-16-le"), ["UTF-16 little-endian", "iconv -f UTF-16"]),
    "utf16.csv": (("text\n" + "".join(r["text"] + "\n" for r in ROWS)).encode("utf-16"), ["UTF-16"]),
    "utf32.txt": ("\n\n".join(r["text"] for r in ROWS).encode("utf-32"), ["UTF-32"]),
    "latin1.jsonl": (jsonl([{"text": "café crème"}]).encode("latin-1"), ["Latin-1", "offset"]),
    "image.jsonl": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, ["binary data"]),
    "truncated.parquet": (b"PAR1\x15\x04\x15", ["truncated.parquet", "parquet"]),
}


@pytest.mark.parametrize("name", sorted(DAMAGED_DATA))
def test_a_damaged_or_foreign_data_file_is_named_in_one_line(name, tiny_model, tmp_path):
    content, fragments = DAMAGED_DATA[name]
    data = tmp_path / name
    data.write_bytes(content)
    before = snapshot(tmp_path)
    result = run_cli(["train", str(data), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out"),
                      "--no-bf16", "--max_steps", "1"])
    one_error_line(result, 1, str(data), *fragments)
    assert snapshot(tmp_path) == before  # not even an output folder


@pytest.mark.parametrize("name, text", [
    ("bom.jsonl", jsonl(ROWS)),
    ("bom.json", json.dumps(ROWS)),
    ("bom.csv", "text\n" + "".join(r["text"] + "\n" for r in ROWS)),
    ("bom.txt", "\n\n".join(r["text"] for r in ROWS)),
])
def test_a_utf8_byte_order_mark_is_accepted_everywhere(name, text, tiny_model, tmp_path):
    data = tmp_path / name
    data.write_bytes(text.encode("utf-8-sig"))
    result = run_cli(["train", str(data), "--model", str(tiny_model), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["examples"] == len(ROWS)
    assert "\ufeff" not in json.dumps(stats, ensure_ascii=False)


@pytest.fixture
def saved_dataset(tmp_path) -> Path:
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(folder))
    for path in [folder, *folder.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield folder
    for path in [folder, *folder.iterdir()]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_read_only_saved_dataset_trains_and_is_left_untouched(saved_dataset, tiny_model, tmp_path):
    before = snapshot(saved_dataset)
    cache = tmp_path / "cache"
    result = run_cli(["train", str(saved_dataset), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out"),
                      "--max_steps", "1", "--no-bf16", "--eval_split", "0.25"], env={"LORATK_DATA_CACHE": str(cache)})
    assert result.exit_code == 0, result.output
    assert snapshot(saved_dataset) == before  # no cache-*.arrow beside the user's data
    assert any(cache.iterdir())  # the tokens were cached where loratk keeps its cache


def test_without_a_cache_nothing_is_written_beside_the_data_either(saved_dataset, tiny_model):
    before = snapshot(saved_dataset)
    result = run_cli(["train", str(saved_dataset), "--model", str(tiny_model), "--dry-run"],
                     env={"LORATK_DATA_CACHE": "off"})
    assert result.exit_code == 0, result.output
    assert snapshot(saved_dataset) == before


@pytest.mark.parametrize("kind", ["dangling", "looping"])
@pytest.mark.parametrize("name", ["data.jsonl", "mydata"])
def test_a_broken_link_to_data_is_a_local_path_not_a_hub_id(kind, name, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = Path(name)
    if kind == "dangling":
        link.symlink_to("moved-away.jsonl")
    else:
        Path("other").symlink_to(name)
        link.symlink_to("other")
    result = run_cli(["train", name, "--model", str(tiny_model), "--output_dir", "out", "--max_steps", "1"])
    one_error_line(result, 1, name, "symbolic link", "moved-away.jsonl" if kind == "dangling" else "loops")
    assert not Path("out").exists()


def test_a_broken_link_to_a_model_is_named(tmp_path, monkeypatch, text_data):
    monkeypatch.chdir(tmp_path)
    Path("mymodel").symlink_to("deleted-model")
    result = run_cli(["generate", "--model", "mymodel", "--prompt", "hi"])
    one_error_line(result, 1, "mymodel", "symbolic link to deleted-model")


# -- model folders ---------------------------------------------------------------------------

MODEL_COMMANDS = {
    "inspect-modules": lambda m, tmp: ["inspect-modules", str(m)],
    "estimate-memory": lambda m, tmp: ["estimate-memory", str(m)],
    "train": lambda m, tmp: ["train", str(tmp / "d.jsonl"), "--model", str(m), "--output_dir", str(tmp / "out"),
                             "--max_steps", "1", "--no-bf16"],
    "generate": lambda m, tmp: ["generate", "--model", str(m), "--prompt", "hi"],
}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_a_truncated_model_config_is_named_with_where_it_breaks(command, model_copy, tmp_path):
    model = model_copy(tmp_path / "model")
    cut_in_half(model / "config.json")
    (tmp_path / "d.jsonl").write_text(jsonl(ROWS), encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli(MODEL_COMMANDS[command](model, tmp_path))
    one_error_line(result, 1, str(model / "config.json"), "is not valid JSON", "at line", "download the model again")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["inspect-modules", "estimate-memory", "train"])
@pytest.mark.parametrize("field, value", [("num_attention_heads", 0), ("hidden_size", -64), ("num_hidden_layers", "2")])
def test_impossible_sizes_in_a_model_config_are_named(command, field, value, model_copy, tmp_path):
    model = model_copy(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, field: value}))
    (tmp_path / "d.jsonl").write_text(jsonl(ROWS), encoding="utf-8")
    result = run_cli(MODEL_COMMANDS[command](model, tmp_path))
    one_error_line(result, 1, str(model / "config.json"), f"{field}: {json.dumps(value)}", "above 0")


@pytest.mark.parametrize("file", ["tokenizer.json", "tokenizer_config.json"])
def test_a_truncated_tokenizer_file_is_named(file, model_copy, tmp_path):
    model = model_copy(tmp_path / "model")
    cut_in_half(model / file)
    (tmp_path / "d.jsonl").write_text(jsonl(ROWS), encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli(MODEL_COMMANDS["train"](model, tmp_path))
    one_error_line(result, 1, str(model / file), "is not valid JSON")
    assert snapshot(tmp_path) == before


def test_truncated_model_weights_are_named(model_copy, tmp_path):
    model = model_copy(tmp_path / "model")
    cut_in_half(model / "model.safetensors")
    result = run_cli(["generate", "--model", str(model), "--prompt", "hi"])
    one_error_line(result, 1, str(model / "model.safetensors"), "damaged", "download the model again")


# -- adapter folders -------------------------------------------------------------------------

def adapter_commands(folder: Path, tmp: Path) -> dict[str, list[str]]:
    return {"generate": ["generate", "--adapter", str(folder), "--prompt", "hi", "--max_new_tokens", "2"],
            "merge": ["merge", "--adapter", str(folder), "--output_dir", str(tmp / "merged")]}


@pytest.mark.parametrize("command", ["generate", "merge"])
def test_a_truncated_adapter_config_is_named(command, adapter, tmp_path):
    folder = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    cut_in_half(folder / "adapter_config.json")
    before = snapshot(tmp_path)
    one_error_line(run_cli(adapter_commands(folder, tmp_path)[command]), 1, str(folder / "adapter_config.json"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["generate", "merge"])
@pytest.mark.parametrize("damage", ["half", "header"])
def test_truncated_adapter_weights_name_the_file_and_the_fix(command, damage, adapter, tmp_path):
    folder = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    weights = folder / "adapter_model.safetensors"
    if damage == "half":
        cut_in_half(weights)
    else:
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # a header length beyond the file
    before = snapshot(tmp_path)
    result = run_cli(adapter_commands(folder, tmp_path)[command])
    one_error_line(result, 1, str(weights), "damaged", "copy the adapter folder again")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage, fragments", [
    ({"list": True}, ["adapter_config.json", "holds a JSON list"]),
    ({"r": 0}, ["adapter_config.json", "r: 0", "above 0"]),
    ({"peft_type": "LORAA"}, ["adapter_config.json", "peft_type 'LORAA'", "did you mean 'LORA'"]),
    ({"weights": None}, ["has no weights", "adapter_model.safetensors is missing"]),
])
@pytest.mark.parametrize("command", ["generate", "merge"])
def test_impossible_adapter_folders_are_named_not_called_a_misfit(command, damage, fragments, adapter, tmp_path):
    folder = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    config = json.loads((folder / "adapter_config.json").read_text())
    if "list" in damage:
        config = [config]
    elif "weights" in damage:
        (folder / "adapter_model.safetensors").unlink()
    else:
        config.update(damage)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    before = snapshot(tmp_path)
    line = one_error_line(run_cli(adapter_commands(folder, tmp_path)[command]), 1, *fragments)
    assert "does not fit base model" not in line
    assert snapshot(tmp_path) == before


def test_a_damaged_saved_dataset_is_named(tiny_model, tmp_path):
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(folder))
    cut_in_half(folder / "state.json")
    before = snapshot(tmp_path)
    result = run_cli(["train", str(folder), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out")])
    one_error_line(result, 1, str(folder), "save it again")
    assert snapshot(tmp_path) == before


def test_a_prompts_file_in_another_encoding_is_named(adapter, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("Où est la café?\n".encode("cp1252"))
    result = run_cli(["generate", "--adapter", str(adapter), "--prompts-file", str(prompts)])
    one_error_line(result, 1, str(prompts), "not UTF-8", "iconv")


@pytest.mark.parametrize("command", [["merge", "--adapter", "{adapter}", "--output_dir", "{tmp}/a-file/merged"],
                                     ["generate", "--adapter", "{adapter}", "--prompt", "hi", "--output",
                                      "{tmp}/a-file/out.jsonl"]])
def test_an_output_below_a_file_is_refused_before_any_work(command, adapter, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    before = snapshot(tmp_path)
    result = run_cli([a.format(adapter=adapter, tmp=tmp_path) for a in command])
    one_error_line(result, 2, f"{tmp_path / 'a-file'} is a file, not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("size", ["abc", "4GiB", "0MB"])
def test_a_shard_size_that_is_no_size_is_refused_before_merging(size, adapter, tmp_path):
    result = run_cli(["merge", "--adapter", str(adapter), "--output_dir", str(tmp_path / "m"), "--max_shard_size", size])
    one_error_line(result, 2, f"--max_shard_size {size!r} is not a size")
    assert list(tmp_path.iterdir()) == []


def code_carrying_pickle(path: Path, tensors: dict) -> None:
    import torch

    torch.save({**tensors, "payload": os.system}, path)  # unpickling it would import os.system


@pytest.mark.parametrize("command", ["generate", "merge"])
def test_an_adapter_bin_holding_code_is_refused_as_unsafe(command, adapter, tmp_path):
    from safetensors.torch import load_file

    folder = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    code_carrying_pickle(folder / "adapter_model.bin", load_file(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    before = snapshot(tmp_path)
    result = run_cli(adapter_commands(folder, tmp_path)[command])
    line = one_error_line(result, 1, str(folder / "adapter_model.bin"), "refuses to load it", "could run code")
    assert "weights_only" not in result.output and "system" in line
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_model) -> tuple[Path, list[str]]:
    """A run with checkpoints 1 and 2; checkpoint-2 and final/ removed, as if it stopped after step 1."""
    folder = tmp_path_factory.mktemp("interrupted")
    data = folder / "d.jsonl"
    data.write_text(jsonl(ROWS), encoding="utf-8")
    args = ["train", str(data), "--model", str(tiny_model), "--output_dir", str(folder / "run"), "--max_steps", "2",
            "--save_steps", "1", "--no-bf16", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    assert run_cli(args).exit_code == 0
    shutil.rmtree(folder / "run" / "final")
    shutil.rmtree(folder / "run" / "checkpoint-2")
    return folder / "run", args


@pytest.mark.parametrize("file", ["optimizer.pt", "rng_state.pth"])
def test_a_checkpoint_pickle_holding_code_is_refused_as_unsafe(file, interrupted_run, tmp_path):
    run = Path(shutil.copytree(interrupted_run[0], tmp_path / "run"))
    checkpoint = run / "checkpoint-1"
    code_carrying_pickle(checkpoint / file, {})
    args = [a if a != str(interrupted_run[0]) else str(run) for a in interrupted_run[1]]
    before = snapshot(checkpoint)
    result = run_cli([*args, "--resume"])
    one_error_line(result, 1, str(checkpoint / file), "refuses to load it", "could run code")
    assert "weights_only" not in result.output
    assert snapshot(checkpoint) == before


# -- outputs that overlap inputs -------------------------------------------------------------

@pytest.fixture
def merge_inputs(adapter, model_copy, tmp_path) -> tuple[Path, Path]:
    model = model_copy(tmp_path / "base")
    folder = Path(shutil.copytree(adapter, tmp_path / "run" / "final"))
    return folder, model


@pytest.mark.parametrize("output, relation", [
    ("run/final", "is adapter"), ("run", "contains adapter"), ("run/final/merged", "is inside adapter"),
    ("base", "is the base model"), ("base/sub", "is inside the base model"), (".", "is the current folder"),
])
def test_merge_refuses_an_output_overlapping_its_inputs_even_with_overwrite(output, relation, merge_inputs, tmp_path,
                                                                            monkeypatch):
    folder, model = merge_inputs
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli(["merge", "--adapter", str(folder), "--model", str(model), "--output_dir", output, "--overwrite"])
    one_error_line(result, 2, f"--output_dir {output} {relation}", "e.g. --output_dir merged")
    assert snapshot(tmp_path) == before  # no temporary folder left either


def test_merged_folders_and_weights_respect_the_umask(adapter, tmp_path):
    old = os.umask(0o022)
    try:
        result = run_cli(["merge", "--adapter", str(adapter), "--output_dir", str(tmp_path / "merged")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    assert stat.S_IMODE(merged.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in merged.iterdir()} == {0o644}


def test_checkpoints_and_final_respect_the_umask(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(jsonl(ROWS), encoding="utf-8")
    old = os.umask(0o027)
    try:
        result = run_cli(["train", str(data), "--model", str(tiny_model), "--output_dir", str(tmp_path / "run"),
                          "--max_steps", "1", "--save_steps", "1", "--no-bf16"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for folder in (tmp_path / "run" / "final", tmp_path / "run" / "checkpoint-1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
            p.name: 0o640 for p in folder.iterdir()}
