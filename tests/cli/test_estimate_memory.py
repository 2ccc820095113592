"""``loratk estimate-memory``: the table, --json, recipes, --gpu-memory and one-line errors."""

from __future__ import annotations

import json

import pytest

from loratk.cli.estimate_memory import parse_memory
from loratk.errors import UsageError
from loratk.testing import run_cli


def go_offline(monkeypatch):
    """No Hub requests (the environment variable is read only when huggingface_hub is imported)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def estimate_json(*args):
    result = run_cli(["estimate-memory", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_table_lists_every_component_and_the_total():
    result = run_cli(["estimate-memory", "HuggingFaceTB/SmolLM2-135M"])
    assert result.exit_code == 0, result.output
    for name in ("base weights", "LoRA parameters", "optimizer states", "activations", "logits and loss",
                 "framework overhead", "total (peak)"):
        assert name in result.output


def test_json_components_add_up_and_follow_train_options():
    report = estimate_json("meta-llama/Llama-2-7b-hf", "--use_4bit", "--max_seq_length", "2048",
                           "--per_device_train_batch_size", "1", "--gradient_checkpointing")
    assert report["total_bytes"] == pytest.approx(sum(c["bytes"] for c in report["components"]), abs=8)
    assert report["settings"]["quantization"] == "bnb-4bit"
    assert report["settings"]["seq_len"] == 2048 and report["settings"]["gradient_checkpointing"]
    assert 6 * 2**30 < report["total_bytes"] < 12 * 2**30  # a QLoRA 7B run on a consumer GPU
    plain = estimate_json("meta-llama/Llama-2-7b-hf", "--max_seq_length", "2048",
                          "--per_device_train_batch_size", "1", "--gradient_checkpointing")
    assert plain["total_bytes"] > report["total_bytes"] + 8 * 2**30


def test_recipe_settings_are_the_defaults_and_flags_override_them():
    report = estimate_json("llama2-7b-4bit")
    assert report["model"] == "meta-llama/Llama-2-7b-hf"
    assert report["settings"]["quantization"] == "bnb-4bit" and report["settings"]["rank"] == 16
    overridden = estimate_json("llama2-7b-4bit", "--lora_rank", "4")
    assert overridden["settings"]["rank"] == 4


def test_gpu_memory_fit_and_largest_settings():
    small = estimate_json("HuggingFaceTB/SmolLM2-135M", "--gpu-memory", "24GB")
    assert small["fit"]["fits"] and small["fit"]["gpu_memory_bytes"] == 24 * 2**30
    assert small["fit"]["largest_batch_size"] > 4
    huge = estimate_json("meta-llama/Llama-2-70b-hf", "--gpu-memory", "24GB", "--use_4bit")
    assert not huge["fit"]["fits"]
    assert huge["fit"]["largest_batch_size"] == 0 and huge["fit"]["largest_seq_length"] == 0
    edge = estimate_json("meta-llama/Llama-2-7b-hf", "--use_4bit", "--gradient_checkpointing", "--gpu-memory", "16GB",
                         "--max_seq_length", "1024")
    largest = edge["fit"]["largest_batch_size"]
    assert largest >= 1
    assert estimate_json("meta-llama/Llama-2-7b-hf", "--use_4bit", "--gradient_checkpointing", "--max_seq_length",
                         "1024", "--per_device_train_batch_size", str(largest))["total_bytes"] <= 16 * 2**30
    assert estimate_json("meta-llama/Llama-2-7b-hf", "--use_4bit", "--gradient_checkpointing", "--max_seq_length",
                         "1024", "--per_device_train_batch_size", str(largest + 1))["total_bytes"] > 16 * 2**30
    text = " ".join(run_cli(["estimate-memory", "HuggingFaceTB/SmolLM2-135M", "--gpu-memory", "24GB"]).output.split())
    assert "fits" in text and "largest batch size" in text


def test_local_folder_on_cpu(tiny_model):
    report = estimate_json(str(tiny_model), "--device", "cpu", "--no-bf16")
    assert report["settings"]["precision"] == "fp32"
    assert all(c["name"] != "framework overhead" for c in report["components"])


@pytest.mark.parametrize("text, expected", [("24GB", 24 * 2**30), ("80 GiB", 80 * 2**30), ("16000MB", 16000 * 2**20),
                                            ("1.5t", int(1.5 * 2**40)), ("12", 12 * 2**30)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("args, message", [
    (["--gpu-memory", "lots"], "--gpu-memory 'lots' is not an amount of memory"),
    (["--gpu-memory", "0GB"], "is not an amount of memory"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be greater than 0"),
    (["--max_seq_length", "-5"], "max_seq_length must be greater than 0"),
    (["--target_modules", "attn"], "its Linear modules are: down_proj, gate_proj"),
    (["--quantization", "bnb-3bit"], "unknown quantization backend 'bnb-3bit'"),
    (["--device", "cpu", "--fp16"], "--fp16 needs a CUDA GPU"),
])
def test_bad_input_is_one_line_with_exit_2(args, message):
    result = run_cli(["estimate-memory", "HuggingFaceTB/SmolLM2-135M", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(UsageError):
        parse_memory("24XB")


def test_unknown_model_offline(monkeypatch):
    go_offline(monkeypatch)
    result = run_cli(["estimate-memory", "nobody/no-such-model"])
    assert result.exit_code == 1
    assert "unknown model 'nobody/no-such-model'" in result.output


def test_variants_add_what_they_train_and_keep():
    plain = estimate_json("HuggingFaceTB/SmolLM2-135M")
    dora = estimate_json("HuggingFaceTB/SmolLM2-135M", "--use-dora")
    head = estimate_json("HuggingFaceTB/SmolLM2-135M", "--modules_to_save", "lm_head")
    tokens = estimate_json("HuggingFaceTB/SmolLM2-135M", "--new_tokens", "<a>", "--new_tokens", "<b>")
    # SmolLM2-135M: 30 layers of q/k/v/o/gate/up/down, outputs 576+192+192+576+1536+1536+576 wide
    assert dora["trainable_parameters"] - plain["trainable_parameters"] == 30 * 5184
    assert dora["total_bytes"] > 1.5 * plain["total_bytes"]  # the magnitude's gradient keeps two outputs per target
    assert head["trainable_parameters"] - plain["trainable_parameters"] == 49152 * 576  # a copy of the (tied) head
    assert tokens["trainable_parameters"] - plain["trainable_parameters"] == 2 * 576  # tied: one row per token
    assert "DoRA magnitudes" in json.dumps(dora["components"])


def test_preference_pairs_count_as_two_sequences_and_the_reference_adds_nothing():
    dpo = estimate_json("HuggingFaceTB/SmolLM2-135M", "--method", "dpo", "--per_device_train_batch_size", "4")
    sft_double = estimate_json("HuggingFaceTB/SmolLM2-135M", "--per_device_train_batch_size", "8")
    sft = estimate_json("HuggingFaceTB/SmolLM2-135M", "--per_device_train_batch_size", "4")
    assert dpo["settings"]["sequences_per_example"] == 2 and dpo["settings"]["batch_size"] == 4
    assert dpo["total_bytes"] == sft_double["total_bytes"] > sft["total_bytes"]
    table = run_cli(["estimate-memory", "HuggingFaceTB/SmolLM2-135M", "--method", "dpo"])
    assert "batch 4 pairs (2 x 4 sequences)" in table.output
