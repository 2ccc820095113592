"""Sources of every kind, lengths, evaluation data and the tokenized-data cache."""

from __future__ import annotations

import json

import pytest

from loratk.config.train_config import TrainConfig
from loratk.engine.data.pipeline import prepare_data
from loratk.errors import DataError

UNICODE = "你好，世界 😀 café — ñandú"
ROWS = {
    "text": [{"text": f"plain {UNICODE} {i}"} for i in range(3)],
    "alpaca": [{"instruction": f"Say {UNICODE}", "input": "" if i else "ctx", "output": f"{UNICODE} {i}"}
               for i in range(3)],
    "prompt_completion": [{"prompt": f"Q{i} {UNICODE}?", "completion": f" A{i} {UNICODE}"} for i in range(3)],
    "messages": [{"messages": [{"role": "user", "content": f"hi {i}"},
                               {"role": "assistant", "content": f"{UNICODE} {i}"}]} for i in range(3)],
    "sharegpt": [{"conversations": [{"from": "system", "value": "be kind"}, {"from": "human", "value": f"hi {i}"},
                                    {"from": "gpt", "value": f"{UNICODE} {i}"}]} for i in range(3)],
}
NESTED = ("messages", "sharegpt")


def write(path, rows, kind: str):
    """Write ``rows`` as a file (or folder) of type ``kind``; returns its path."""
    from datasets import Dataset

    if kind == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif kind == "json-data":
        path.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "csv":
        Dataset.from_list(rows).to_csv(str(path))
    elif kind == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "disk":
        Dataset.from_list(rows).save_to_disk(str(path))
    return path


SUFFIX = {"json": ".json", "json-data": ".json", "jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet", "disk": ""}
CASES = [(fmt, kind) for kind in SUFFIX for fmt in ROWS if not (kind == "csv" and fmt in NESTED)]


@pytest.mark.parametrize("row_format, kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_every_row_format_reads_from_every_file_type_and_round_trips_utf8(row_format, kind, tmp_path,
                                                                         tiny_tokenizer):
    path = write(tmp_path / f"data{SUFFIX[kind]}", ROWS[row_format], kind)
    data = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(path)], "max_seq_length": 256}),
                        tiny_tokenizer)
    assert data.kind == row_format and data.stats["examples"] == 3
    texts = [tiny_tokenizer.decode(row["input_ids"]) for row in data.train]
    assert all(UNICODE in text for text in texts)
    trained = [tiny_tokenizer.decode([t for t in row["labels"] if t != -100]) for row in data.train]
    if row_format == "text":
        assert trained == texts
    else:  # completion-only: the response and its end-of-turn, never the prompt
        assert all(t.startswith((UNICODE, f" A")) and t.endswith("<|im_end|>") for t in trained)
        assert all("hi " not in t and "Say" not in t for t in trained)


def test_txt_files_hold_one_example_per_paragraph(tmp_path, tiny_tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text(f"first line\nsame example\n\n{UNICODE}\n  \n\n\nthird\n", encoding="utf-8")
    data = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(path)]}), tiny_tokenizer)
    texts = [tiny_tokenizer.decode(r["input_ids"], skip_special_tokens=True) for r in data.train]
    assert texts == ["first line\nsame example", UNICODE, "third"]


def test_several_sources_of_different_formats_mix(tmp_path, tiny_tokenizer):
    a = write(tmp_path / "a.jsonl", ROWS["messages"], "jsonl")
    b = write(tmp_path / "b.csv", ROWS["alpaca"], "csv")
    c = write(tmp_path / "c.parquet", ROWS["text"], "parquet")
    data = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(a), str(b), str(c)]}), tiny_tokenizer)
    assert data.kind == "messages+alpaca+text" and data.stats["rows"] == 9 and len(data.train) == 9


def test_hub_ids_pass_config_and_split(monkeypatch, tiny_tokenizer):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS["prompt_completion"])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = TrainConfig.from_mapping({"dataset_path": ["someone/qa"], "dataset_config": "en",
                                       "dataset_split": "validation"})
    assert prepare_data(config, tiny_tokenizer).kind == "prompt_completion"
    assert calls == [("someone/qa", "en", "validation")]


def long_rows(tmp_path):
    rows = [{"prompt": "short question", "completion": " short answer"},
            {"prompt": "word " * 60, "completion": " the answer"},  # the answer starts after the limit
            {"prompt": "q", "completion": " long answer " * 30}]
    return write(tmp_path / "long.jsonl", rows, "jsonl")


def test_long_examples_are_truncated_and_fully_cut_responses_dropped(tmp_path, tiny_tokenizer):
    data = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(long_rows(tmp_path))], "max_seq_length": 40}),
                        tiny_tokenizer)
    stats = data.stats
    assert (stats["rows"], stats["examples"]) == (3, 2)
    assert (stats["truncated_examples"], stats["dropped_cut_off_examples"], stats["dropped_long_examples"]) == (1, 1, 0)
    assert max(data.train["length"]) == 40


def test_drop_long_drops_instead_of_truncating(tmp_path, tiny_tokenizer):
    config = TrainConfig.from_mapping({"dataset_path": [str(long_rows(tmp_path))], "max_seq_length": 40,
                                       "drop_long": True})
    stats = prepare_data(config, tiny_tokenizer).stats
    assert (stats["examples"], stats["dropped_long_examples"], stats["truncated_examples"]) == (1, 2, 0)


def test_a_dataset_with_every_example_dropped_says_why(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "d.jsonl", [{"prompt": "word " * 60, "completion": " x"}] * 2, "jsonl")
    config = TrainConfig.from_mapping({"dataset_path": [str(path)], "max_seq_length": 16})
    with pytest.raises(DataError, match="every one of the 2 examples was dropped: 2 whose response starts after"):
        prepare_data(config, tiny_tokenizer)
    with pytest.raises(DataError, match="2 longer than max_seq_length 16 \\(--drop_long\\)"):
        prepare_data(TrainConfig.from_mapping({**config.recorded(), "drop_long": True}), tiny_tokenizer)


def test_eval_dataset_path_is_formatted_like_the_training_data(tmp_path, tiny_tokenizer):
    train = write(tmp_path / "train.jsonl", ROWS["messages"], "jsonl")
    held = write(tmp_path / "eval.json", ROWS["sharegpt"][:2], "json")
    data = prepare_data(TrainConfig.from_mapping({"dataset_path": [str(train)], "eval_dataset_path": [str(held)]}),
                        tiny_tokenizer)
    assert (len(data.train), len(data.eval)) == (3, 2)
    assert all(any(label != -100 for label in row["labels"]) for row in data.eval)
    assert (data.stats["train_examples"], data.stats["eval_examples"]) == (3, 2)


def test_second_run_reuses_the_tokenized_cache_until_something_changes(tmp_path, tiny_tokenizer, monkeypatch,
                                                                       private_data_cache):
    from loratk.engine.data import examples

    path = write(tmp_path / "chat.jsonl", ROWS["messages"], "jsonl")
    config = TrainConfig.from_mapping({"dataset_path": [str(path)]})
    first = prepare_data(config, tiny_tokenizer)
    calls = []
    real = examples.tokenize_source
    monkeypatch.setattr(examples, "tokenize_source", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = prepare_data(config, tiny_tokenizer)
    assert calls == [] and second.stats["cached_sources"] == 1 and any(private_data_cache.iterdir())
    assert list(second.train["input_ids"]) == list(first.train["input_ids"])
    assert list(second.train["labels"]) == list(first.train["labels"])
    prepare_data(TrainConfig.from_mapping({**config.recorded(), "train_on_inputs": True}), tiny_tokenizer)
    assert len(calls) == 1  # a different setting is a different key
    write(path, ROWS["messages"][:2], "jsonl")
    assert prepare_data(config, tiny_tokenizer).stats["examples"] == 2  # changed data is re-read
    assert len(calls) == 2


def test_cache_can_be_turned_off(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("LORATK_DATA_CACHE", "off")
    path = write(tmp_path / "t.jsonl", ROWS["text"], "jsonl")
    config = TrainConfig.from_mapping({"dataset_path": [str(path)]})
    prepare_data(config, tiny_tokenizer)
    assert prepare_data(config, tiny_tokenizer).stats["cached_sources"] == 0
