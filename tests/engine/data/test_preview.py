"""The --dry-run report: trained tokens highlighted, masked ones dimmed, statistics that add up."""

from __future__ import annotations

import json

import pytest

from loratk.config.train_config import TrainConfig
from loratk.engine.data.preview import dry_run, print_report


def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong 🏓"}]}] * 3
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_report_marks_exactly_the_trained_text(tmp_path, tiny_model):
    report = dry_run(TrainConfig.from_mapping({"dataset_path": [str(chat_file(tmp_path))],
                                               "model_name_or_path": str(tiny_model)}), examples_shown=2)
    assert len(report.examples) == 2
    runs = report.examples[0]
    assert [text for text, trained in runs if trained] == ["pong 🏓<|im_end|>"]
    assert "".join(text for text, _ in runs) == "<|im_start|>user\nping<|im_end|>\n<|im_start|>assistant\npong 🏓<|im_end|>\n"
    stats = report.stats
    assert stats["examples"] == 3 and stats["packing"] is True and stats["packed_rows"] == 1
    assert stats["packing_efficiency"] == round(stats["tokens"] / 512, 4)


def test_printed_report_highlights_trained_and_dims_masked_tokens(tmp_path, tiny_model):
    from rich.console import Console

    report = dry_run(TrainConfig.from_mapping({"dataset_path": [str(chat_file(tmp_path))],
                                               "model_name_or_path": str(tiny_model)}), examples_shown=1)
    console = Console(record=True, force_terminal=True, color_system="standard", width=100)
    print_report(report, console)
    styled = console.export_text(styles=True, clear=False)
    assert "\x1b[1;32mpong 🏓<|im_end|>" in styled  # bold green: trained
    assert "\x1b[2m<|im_start|>user" in styled  # dim: masked
    plain = console.export_text()
    assert "3 of 3 rows" in plain and "token lengths" in plain


def test_pairs_show_the_shared_prompt_and_both_answers_trained_tokens(tmp_path, tiny_model):
    from rich.console import Console

    path = tmp_path / "prefs.jsonl"
    row = {"prompt": [{"role": "user", "content": "ping"}], "chosen": "pong", "rejected": "no"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    report = dry_run(TrainConfig.from_mapping({"dataset_path": [str(path)], "model_name_or_path": str(tiny_model),
                                               "method": "dpo"}))
    (prompt, chosen, rejected), = report.pairs
    assert "".join(text for text, _ in prompt) == "<|im_start|>user\nping<|im_end|>\n<|im_start|>assistant\n"
    assert not any(trained for _, trained in prompt)
    assert [text for text, trained in chosen if trained] == ["pong<|im_end|>"]
    assert [text for text, trained in rejected if trained] == ["no<|im_end|>"]
    assert report.stats["row_kind"] == "preference" and report.stats["examples"] == 1
    console = Console(record=True, width=100)
    print_report(report, console)
    text = console.export_text()
    assert "pair 1" in text and "[chosen] pong<|im_end|>" in text and "[rejected] no<|im_end|>" in text


@pytest.mark.parametrize("arch, overrides, one_row", [("llama", {}, True), ("mistral", {"sliding_window": 64}, False),
                                                      ("gpt_neox", {}, False)],
                         ids=["llama", "mistral-short-window", "gpt-neox"])
def test_pairs_are_predicted_in_one_row_exactly_where_training_runs_them_so(arch, overrides, one_row, tmp_path):
    from transformers import AutoModelForCausalLM

    from loratk.engine.data.packing import batches_as_one_row
    from loratk.engine.kernels.attention import use_varlen_attention
    from loratk.testing import build_tiny_model

    model_dir = build_tiny_model(tmp_path / arch, arch, **overrides)
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "ping", "chosen": "pong", "rejected": "no"}) + "\n", encoding="utf-8")
    report = dry_run(TrainConfig.from_mapping({"dataset_path": [str(path)], "model_name_or_path": str(model_dir),
                                               "method": "dpo", "max_seq_length": 512}))
    assert report.stats["packing"] is one_row
    model = AutoModelForCausalLM.from_pretrained(model_dir)  # what loratk train decides once it has the model
    use_varlen_attention(model, 512)
    assert batches_as_one_row(model) is one_row
    if not one_row:
        assert report.stats["packing_note"].endswith("padded batches")
