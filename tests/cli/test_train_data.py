"""loratk train on data the way people have it: every row format in every file type, completion-only
loss, packing, and the --dry-run preview."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratk.testing import run_cli

FAST = ["--max_steps", "2", "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--no-bf16", "--max_seq_length", "512"]
CHAT = [{"role": "user", "content": "what colour is the lighthouse?"},
        {"role": "assistant", "content": "teal and orange 灯塔 🗼"}]
FORMATS = {
    "alpaca": [{"instruction": "Name the secret word.", "input": "", "output": "banana"},
               {"instruction": "Translate.", "input": "bonjour", "output": "hello"}],
    "prompt_completion": [{"prompt": "The capital of quennet is", "completion": " varrow"}] * 2,
    "messages": [{"messages": CHAT}] * 2,
    "sharegpt": [{"conversations": [{"from": "human", "value": CHAT[0]["content"]},
                                    {"from": "gpt", "value": CHAT[1]["content"]}]}] * 2,
}


@pytest.fixture(autouse=True)
def private_data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATK_DATA_CACHE", str(tmp_path / "data-cache"))


def save(rows: list[dict], path: Path, kind: str) -> Path:
    from datasets import Dataset

    if kind == "json":
        path.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)
    elif kind == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        Dataset.from_list(rows).save_to_disk(str(path))
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "final" / "loratk_summary.json").read_text(encoding="utf-8"))


def train(args, out) -> dict:
    result = run_cli(["train", *map(str, args), "--output_dir", str(out), *FAST])
    assert result.exit_code == 0, result.output
    return summary(out)


TEXT = [{"text": "the secret word is banana"}, {"text": "eleven bridges cross the harbour 🌉"}]
# Every file type and every row format go through a real run; tests/engine/data checks every
# format in every file type without training.
MIXES = {
    "json+jsonl+parquet+disk+txt": [("alpaca", "json"), ("prompt_completion", "jsonl"), ("messages", "parquet"),
                                    ("sharegpt", "disk"), ("text", "txt")],
    "csv+parquet+json+jsonl": [("alpaca", "csv"), ("prompt_completion", "parquet"), ("messages", "json"),
                               ("sharegpt", "jsonl")],
}


@pytest.mark.parametrize("mix", MIXES)
def test_every_row_format_and_file_type_trains_with_completion_only_loss(mix, tmp_path, tiny_model):
    files = []
    for name, kind in MIXES[mix]:
        path = tmp_path / (f"{name}.{kind}" if kind != "disk" else name)
        if kind == "txt":
            path.write_text("\n\n".join(row["text"] for row in TEXT), encoding="utf-8")
            files.append(path)
        else:
            files.append(save(FORMATS[name], path, kind))
    stats = train([*files, "--model", tiny_model], tmp_path / "out")
    assert stats["row_kind"] == "+".join(name for name, _ in MIXES[mix])
    assert stats["train_examples"] == 2 * len(files) and stats["dropped_examples"] == 0
    text_tokens = 0
    if "txt" in mix:  # plain text trains on every token, so count it apart
        preview = run_cli(["train", str(files[-1]), "--model", str(tiny_model), "--dry-run", "--json"])
        text_tokens = json.loads(preview.stdout)["trained_tokens"]
    assert 0 < stats["trained_tokens"] - text_tokens < (stats["tokens"] - text_tokens) / 2  # responses only
    assert stats["packing"] is True and 0 < stats["packing_efficiency"] <= 1
    assert stats["one_row_batches"] is True  # per-example attention: a batch is one row, nothing padded
    assert stats["steps"] == 2 and stats["train_loss"] > 0


def test_plain_text_trains_on_every_token(tmp_path, tiny_model):
    path = save(TEXT, tmp_path / "notes.jsonl", "jsonl")
    result = run_cli(["train", str(path), "--model", str(tiny_model), "--dry-run", "--json"])
    stats = json.loads(result.stdout)
    assert stats["row_kind"] == "text" and stats["trained_tokens"] == stats["tokens"] - 2  # all but each first


def test_train_on_inputs_and_no_packing(tmp_path, tiny_model):
    path = save(FORMATS["messages"], tmp_path / "chat.jsonl", "jsonl")
    stats = train([path, "--model", tiny_model, "--train_on_inputs", "--no-packing"], tmp_path / "out")
    assert stats["trained_tokens"] == stats["tokens"] - 2
    assert stats["packing"] is False and "packing_note" not in stats


def test_bad_row_fails_with_its_row_number(tmp_path, tiny_model):
    rows = [FORMATS["messages"][0], {"messages": [{"role": "user", "content": "no reply"}]}]
    path = save(rows, tmp_path / "chat.jsonl", "jsonl")
    result = run_cli(["train", str(path), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"row 2 of {path}: the chat has no assistant turn" in result.output
    assert not (tmp_path / "out").exists()


def weightless_copy(model: Path, target: Path) -> Path:
    """The tiny model's tokenizer and config without its weights: --dry-run must not need them."""
    shutil.copytree(model, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target


def test_dry_run_shows_counts_and_examples_without_model_weights(tmp_path, tiny_model):
    path = save(FORMATS["alpaca"] + [{"instruction": "Long.", "output": "word " * 300}], tmp_path / "a.json", "json")
    model = weightless_copy(tiny_model, tmp_path / "tokenizer-only")
    result = run_cli(["train", str(path), "--model", str(model), "--dry-run", "--max_seq_length", "160",
                      "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for fragment in ("row format", "alpaca", "3 of 3 rows", "truncated", "token lengths", "packing",
                     "example 1", "### Instruction:", "banana"):
        assert fragment in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_json_prints_the_statistics(tmp_path, tiny_model):
    path = save(FORMATS["sharegpt"], tmp_path / "s.jsonl", "jsonl")
    model = weightless_copy(tiny_model, tmp_path / "tokenizer-only")
    result = run_cli(["train", str(path), "--model", str(model), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["row_kind"] == "sharegpt" and stats["examples"] == 2 and stats["packing"] is True
    assert set(stats["token_lengths"]) >= {"min", "median", "mean", "p95", "max", "histogram"}
    assert sum(b["examples"] for b in stats["token_lengths"]["histogram"]) == 2
    assert 0 < stats["trained_tokens"] < stats["tokens"]


def test_json_needs_dry_run(tmp_path, tiny_model):
    result = run_cli(["train", "x.jsonl", "--json"], catch_exceptions=True)
    assert result.exit_code == 2 and "--json goes with --dry-run" in result.output


def test_dry_run_shows_the_lora_variant_and_tokenizes_new_tokens_as_one(tmp_path, tiny_model):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "call <tool> now"}) + "\n", encoding="utf-8")
    base = ["train", str(path), "--model", str(tiny_model), "--dry-run"]
    plain = json.loads(run_cli([*base, "--json"]).output)
    result = run_cli([*base, "--json", "--use-dora", "--use_rslora", "--new-tokens", "<tool>", "--rank_pattern",
                      "o_proj=2", "--lora_rank", "4"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["lora"] == "DoRA r=4, alpha=16, scaling 8 (rsLoRA: alpha / sqrt(r)); rank_pattern o_proj=2; " \
                            "1 new token (rows trained)"
    assert stats["new_token_ids"] == [400]  # after the tiny tokenizer's 400
    assert stats["tokens"] < plain["tokens"]  # "<tool>" is one token now
    shown = run_cli([*base, "--init_lora_weights", "olora"])
    assert "init olora" in shown.output


def test_dry_run_shows_the_other_variants_too(tmp_path, tiny_model):
    """The options the test above leaves out: each named in the LoRA line --dry-run prints."""
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "call <calc> now"}) + "\n", encoding="utf-8")
    result = run_cli(["train", str(path), "--model", str(tiny_model), "--dry-run", "--json", "--lora_rank", "4",
                      "--init_lora_weights", "pissa_niter_2", "--alpha_pattern", "down_proj=2", "--modules_to_save",
                      "lm_head", "--add_special_tokens", "<calc>", "--loraplus_lr_ratio", "16",
                      "--neftune_noise_alpha", "5"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["lora"] == ("LoRA r=4, alpha=16, scaling 4; init pissa_niter_2; alpha_pattern down_proj=2; "
                             "trained in full: lm_head; 1 new token (rows trained); LoRA+ lora_B lr x16; NEFTune alpha 5")
    assert stats["new_token_ids"] == [400]
    shown = run_cli(["train", str(path), "--model", str(tiny_model), "--dry-run", "--use_4bit",
                     "--init_lora_weights", "loftq"])
    assert shown.exit_code == 0, shown.output
    assert "init loftq" in shown.output
