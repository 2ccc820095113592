"""Built-in data sources: JSON, JSONL, CSV, Parquet and plain-text files, Hub dataset ids and
save_to_disk folders.

JSON and JSONL are parsed here rather than by ``datasets`` so a malformed file is reported with
the line and column where it breaks.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from loratk.errors import DataError
from loratk.fileio import check_text_head, read_text
from loratk.plugins.hookspecs import hookimpl


def _rows_to_dataset(rows: list, source: str):
    from datasets import Dataset

    if not rows:
        raise DataError(f"dataset {source} has no rows", "add at least one example")
    bad = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(
            f"row {bad} of {source} is {type(rows[bad - 1]).__name__}, not an object",
            'each example must be an object such as {"text": "..."}',
        )
    try:
        return Dataset.from_list(rows)
    except Exception as exc:  # pyarrow type clashes between rows
        row = _first_clashing_row(rows)
        raise DataError(f"row {row} of {source} does not have the field types of the rows before it: {exc}",
                        "give every row the same fields and types (e.g. strings stay strings)") from exc


def _first_clashing_row(rows: list) -> int:
    """The 1-based number of the first row that cannot join a table with the rows before it."""
    from datasets import Dataset

    good, bad = 1, len(rows)  # rows[:good] builds, rows[:bad] does not
    while bad - good > 1:
        middle = (good + bad) // 2
        try:
            Dataset.from_list(rows[:middle])
            good = middle
        except Exception:
            bad = middle
    return bad


def _json_problem(exc: json.JSONDecodeError) -> str:
    # Some of json's messages end in "at" already ("Invalid control character at").
    return exc.msg.removesuffix(" at")


def load_json(source: str, options: Mapping[str, Any]):
    text = read_text(source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{source} is not valid JSON: {_json_problem(exc)} at line {exc.lineno}, column {exc.colno}",
            "fix the file, or name it .jsonl if it holds one JSON object per line",
        ) from exc
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(
                f"{source} holds an object with keys {sorted(data)}, not a list of examples",
                'use a JSON array, or an object with one list of examples such as {"data": [...]}',
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{source} holds a JSON {type(data).__name__}, not a list of examples", "use a JSON array of objects")
    return _rows_to_dataset(data, source)


def load_jsonl(source: str, options: Mapping[str, Any]):
    rows = []
    for number, line in enumerate(read_text(source).split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source} line {number} is not valid JSON: {_json_problem(exc)} at column {exc.colno}",
                "each line of a .jsonl file must be one complete JSON object",
            ) from exc
    return _rows_to_dataset(rows, source)


def load_txt(source: str, options: Mapping[str, Any]):
    """Plain text, one example per paragraph: examples are separated by blank lines."""
    text = read_text(source).replace("\r\n", "\n")
    examples = [part.strip("\n") for part in re.split(r"\n[ \t]*\n", text) if part.strip()]
    column = options.get("text_column") or "text"
    return _rows_to_dataset([{column: example} for example in examples], source)


def _load_with_builder(builder: str, source: str):
    from datasets import load_dataset

    try:
        return load_dataset(builder, data_files=source, split="train")
    except Exception as exc:
        raise DataError(f"cannot read {source} as {builder}: {exc}", f"check that it is a valid {builder} file") from exc


def load_csv(source: str, options: Mapping[str, Any]):
    check_text_head(source)
    return _load_with_builder("csv", source)


def load_parquet(source: str, options: Mapping[str, Any]):
    return _load_with_builder("parquet", source)


def load_disk(source: str, options: Mapping[str, Any]):
    from datasets import DatasetDict, load_from_disk

    try:
        # Read into memory, as JSON files are: processing a memory-mapped dataset would write
        # datasets' cache files into the user's folder (which may be read-only).
        data = load_from_disk(source, keep_in_memory=True)
    except Exception as exc:  # a damaged state.json, dataset_info.json or arrow file
        raise DataError(f"cannot read the saved dataset {source}: {type(exc).__name__}: {exc}",
                        "the folder is damaged: save it again with Dataset.save_to_disk") from exc
    if isinstance(data, DatasetDict):
        split = options.get("dataset_split") or "train"
        if split not in data:
            raise DataError(f"{source} has no split {split!r}; it has {sorted(data)}", "choose one with --dataset_split")
        data = data[split]
    return data


def load_hub(source: str, options: Mapping[str, Any]):
    from datasets import load_dataset

    split = options.get("dataset_split") or "train"
    try:
        return load_dataset(source, options.get("dataset_config"), split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load Hub dataset {source!r} (split {split!r}): {type(exc).__name__}: {exc}",
            "check the dataset id and your network connection, or download the data and pass the file",
        ) from exc


@hookimpl
def register_dataset_formats(register):
    register("json", load_json, extensions=[".json"])
    register("jsonl", load_jsonl, extensions=[".jsonl", ".ndjson"])
    register("csv", load_csv, extensions=[".csv"])
    register("parquet", load_parquet, extensions=[".parquet", ".pq"])
    register("txt", load_txt, extensions=[".txt"])
    register("disk", load_disk)
    register("hub", load_hub)
