"""Bad input to loratk train: a one-line error naming the problem, the right exit code, and
nothing written to output_dir."""

from __future__ import annotations

import json

import pytest

from loratk.testing import run_cli


def fails(args, code, *fragments, out=None):
    result = run_cli(["train", *args])
    assert result.exit_code == code, result.output
    error_lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.output  # one line, no traceback
    assert error_lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in error_lines[0], result.output
    if out is not None:
        assert not out.exists(), f"{out} was created by a failing run"
    return error_lines[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_missing_dataset_file(tiny_model, out, tmp_path):
    fails([str(tmp_path / "nope.json"), "--model", str(tiny_model), "--output_dir", str(out)], 1,
          "nope.json", "does not exist", out=out)


def test_no_dataset_at_all(tiny_model, out):
    fails(["--model", str(tiny_model), "--output_dir", str(out)], 2, "no dataset given", out=out)


def test_malformed_json_says_where(tiny_model, out, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "a"},\n {"text": "b"\n]', encoding="utf-8")
    fails([str(bad), "--model", str(tiny_model), "--output_dir", str(out)], 1, "bad.json", "line 3", out=out)


def test_malformed_jsonl_names_the_line(tiny_model, out, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    fails([str(bad), "--model", str(tiny_model), "--output_dir", str(out)], 1, "line 2", out=out)


def test_missing_text_column_lists_the_columns(tiny_model, out, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"body": "x", "title": "y"}) + "\n", encoding="utf-8")
    fails([str(data), "--model", str(tiny_model), "--output_dir", str(out)], 1, "'text'", "body", "title", out=out)


def test_empty_dataset(tiny_model, out, tmp_path):
    data = tmp_path / "empty.json"
    data.write_text("[]", encoding="utf-8")
    fails([str(data), "--model", str(tiny_model), "--output_dir", str(out)], 1, "no rows", out=out)


def test_4bit_and_8bit_together(text_data, tiny_model, out):
    fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--use_4bit", "--use_8bit"], 2,
          "use_4bit and use_8bit", out=out)


def test_unknown_recipe_suggests_close_names(text_data, out):
    line = fails([str(text_data), "--recipe", "llama2-7b-4bt", "--output_dir", str(out)], 2, "llama2-7b-4bt", out=out)
    assert "did you mean 'llama2-7b-4bit'" in line


@pytest.mark.parametrize("option,value", [("--lora_rank", "0"), ("--lora_rank", "-4"), ("--learning_rate", "0"),
                                          ("--learning_rate", "-1e-4"), ("--num_train_epochs", "0"),
                                          ("--num_train_epochs", "-1")])
def test_non_positive_numbers(option, value, text_data, tiny_model, out):
    fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), option, value], 2,
          option.lstrip("-"), "greater than 0", out=out)


def test_several_problems_reported_at_once(text_data, tiny_model, out):
    line = fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--lora_rank", "0",
                  "--learning_rate", "0", "--lora_dropout", "1.5"], 2, "3 problems")
    assert "lora_rank" in line and "learning_rate" in line and "lora_dropout" in line


def test_model_path_that_does_not_exist(text_data, out, tmp_path):
    fails([str(text_data), "--model", str(tmp_path / "no-such-model"), "--output_dir", str(out)], 1,
          "no-such-model", "does not exist", out=out)


def test_unknown_target_module_lists_linear_names(text_data, tiny_model, out):
    fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--target_modules", "q_proj,qq_proj"],
          2, "'qq_proj'", "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj", out=out)


def test_unknown_quantization_backend(text_data, tiny_model, out):
    fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--quantization", "bnb-3bit"], 2,
          "bnb-3bit", "did you mean", out=out)


def test_finished_output_dir_is_not_overwritten(text_data, tiny_model, tmp_path):
    out = tmp_path / "done"
    (out / "final").mkdir(parents=True)
    (out / "final" / "adapter_config.json").write_text("{}")
    fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out)], 2, "finished adapter", "--overwrite")
    assert (out / "final" / "adapter_config.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["final"]


def test_overwrite_replaces_a_finished_adapter(text_data, tiny_model, tmp_path):
    out = tmp_path / "done"
    (out / "final").mkdir(parents=True)
    (out / "final" / "adapter_config.json").write_text("{}")
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--overwrite",
                      "--max_steps", "1", "--no-bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_debug_shows_the_traceback(tiny_model, out, tmp_path):
    result = run_cli(["--debug", "train", str(tmp_path / "nope.json"), "--model", str(tiny_model),
                      "--output_dir", str(out)], catch_exceptions=True)
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "DataError"


def test_the_output_head_as_a_target_is_explained(text_data, tiny_model, tiny_model_factory, out):
    line = fails([str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--target_modules", "lm_head"],
                 2, "'lm_head' is the output head", "leave lm_head out of --target_modules", "q_proj", out=out)
    assert "no Linear module" not in line
    tied = tiny_model_factory("gpt2")  # gpt2 ties its head to the token embedding
    fails([str(text_data), "--model", str(tied), "--output_dir", str(out), "--target_modules", "lm_head"],
          2, "shares (is tied to) the input embedding", out=out)


def test_dry_run_refuses_an_unknown_quantization_like_a_run(text_data, tiny_model):
    fails([str(text_data), "--model", str(tiny_model), "--dry-run", "--quantization", "bnb-4bti"], 2,
          "unknown quantization backend 'bnb-4bti'", "did you mean 'bnb-4bit'")


def test_a_null_field_is_not_called_missing(tiny_model, out, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine"}\n{"text": null}\n', encoding="utf-8")
    fails([str(data), "--model", str(tiny_model), "--output_dir", str(out)], 1, "row 2 of", "'text' field is null", out=out)
    data.write_text('{"body": "x", "text": "fine"}\n{"body": "y"}\n', encoding="utf-8")
    fails([str(data), "--model", str(tiny_model), "--output_dir", str(out)], 1, "row 2 of", "'text' field is null (or absent")


@pytest.mark.parametrize("drop_long", [False, True])
def test_everything_dropped_hints_at_drop_long_only_when_given(drop_long, tiny_model, out, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "a long prompt " * 20, "completion": "the answer"}] * 2
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    line = fails([str(data), "--model", str(tiny_model), "--output_dir", str(out), "--max_seq_length", "16",
                  *(["--drop_long"] if drop_long else [])], 1, "every one of the 2 examples was dropped", out=out)
    assert ("leave out --drop_long" in line) == drop_long
