"""Row formats: detected from the columns, and bad rows reported with their row number."""

from __future__ import annotations

import json

import pytest

from loratk.config.train_config import TrainConfig
from loratk.engine.data.formats import detect_format
from loratk.engine.data.pipeline import prepare_data
from loratk.errors import DataError


@pytest.mark.parametrize("columns, expected", [
    (["text"], "text"),
    (["instruction", "input", "output"], "alpaca"),
    (["instruction", "output"], "alpaca"),
    (["prompt", "completion"], "prompt_completion"),
    (["messages"], "messages"),
    (["conversations", "id"], "sharegpt"),
])
def test_format_is_detected_from_the_columns(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_are_named():
    with pytest.raises(DataError, match="columns are: question, answer"):
        detect_format(["question", "answer"], source="qa.jsonl")


GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "2+2=", "completion": ""}, "row 3 of .*: 'completion' is empty"),
    ({"prompt": "2+2=", "completion": 4}, "row 3 of .*does not have the field types of the rows before it"),
    ({"instruction": "add", "input": "1 2"}, "row 3 of .*: the 'output' field is null \\(or absent from this row\\)"),
    ({"instruction": "add", "input": "1 2", "output": None}, "row 3 of .*: the 'output' field is null \\(or absent from this row\\)"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
     "row 3 of .*, turn 2: unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "row 3 of .*: the chat has no assistant turn"),
    ({"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]},
     "row 3 of .*does not have the field types"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]},
     "row 3 of .*, turn 2: unknown role 'robot'"),
])
def test_bad_rows_name_their_row_number(bad_row, message, tmp_path, tiny_tokenizer):
    good = {key: value for key, value in {
        "prompt": {"prompt": "1+1=", "completion": "2"},
        "instruction": {"instruction": "add", "input": "1 1", "output": "2"},
        "messages": GOOD_CHAT,
        "conversations": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    }.items() if key in bad_row}
    good_row = next(iter(good.values()))
    path = tmp_path / "data.jsonl"
    rows = [good_row, good_row, bad_row, good_row]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = TrainConfig.from_mapping({"dataset_path": [str(path)]})
    with pytest.raises(DataError, match=message):
        prepare_data(config, tiny_tokenizer)


def test_forcing_a_row_format_overrides_detection(tmp_path, tiny_tokenizer):
    path = tmp_path / "both.jsonl"
    path.write_text(json.dumps({"text": "plain words", "prompt": "p", "completion": "c"}) + "\n", encoding="utf-8")
    forced = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(path)], "dataset_format": "text"}),
                          tiny_tokenizer)
    detected = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(path)]}), tiny_tokenizer)
    assert (forced.kind, detected.kind) == ("text", "prompt_completion")


def test_unknown_dataset_format_suggests_row_and_file_formats(tmp_path, tiny_tokenizer):
    from loratk.errors import UsageError

    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match="unknown dataset format 'alpacca'.*alpaca") as caught:
        prepare_data(TrainConfig.from_mapping({"dataset_path": [str(path)], "dataset_format": "alpacca"}),
                     tiny_tokenizer)
    assert "sharegpt" in caught.value.hint and "parquet" in caught.value.hint


def test_eval_split_and_eval_dataset_path_exclude_each_other():
    from loratk.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_split and eval_dataset_path exclude each other"):
        TrainConfig.from_mapping({"eval_split": 0.1, "eval_dataset_path": ["e.jsonl"]})


def test_a_field_that_is_not_a_string_in_every_row_is_named():
    from loratk.engine.data.formats import to_example

    with pytest.raises(DataError, match="row 4 of x.jsonl: 'completion' is int 4, not a string"):
        to_example({"prompt": "2+2=", "completion": 4}, "prompt_completion", "row 4 of x.jsonl")
