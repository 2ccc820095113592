"""One source's rows to training examples: checked, tokenized, cut to length, counted.

An example longer than ``max_seq_length`` is truncated (or dropped with ``drop_long``); one whose
response is cut off entirely is dropped, since it would train on nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loratk.engine.data.formats import detect_format, to_example
from loratk.engine.data.tokenize import target_count, tokenize_example

KEPT, TRUNCATED, DROPPED_LONG, CUT_OFF = "kept", "truncated", "dropped_long", "cut_off"


@dataclass(frozen=True)
class DataSettings:
    max_seq_length: int = 512
    text_column: str = "text"
    train_on_inputs: bool = False
    drop_long: bool = False
    row_format: str | None = None  # forced; None detects it from the columns

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize_source(rows, source: str, tokenizer, settings: DataSettings):
    """(examples, stats) for one loaded source; ``examples`` has input_ids, labels and length."""
    row_format = settings.row_format or detect_format(rows.column_names, settings.text_column, source)
    limit = settings.max_seq_length

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        example = to_example(row, row_format, f"row {index + 1} of {source}", settings.text_column)
        tokens = tokenize_example(example, tokenizer, settings.train_on_inputs)
        ids, labels = tokens.input_ids, tokens.labels
        status = KEPT
        if len(ids) > limit:
            status = DROPPED_LONG if settings.drop_long else TRUNCATED
            ids, labels = ids[:limit], labels[:limit]
        if status != DROPPED_LONG and target_count(labels) == 0:
            status = CUT_OFF
        return {"input_ids": ids, "labels": labels, "length": len(ids), "status": status}

    # In memory: datasets would otherwise write its cache files beside the source's own (a user's
    # save_to_disk folder, perhaps read-only); loratk's cache (cache.py) stores the result.
    converted = rows.map(convert, with_indices=True, remove_columns=rows.column_names,
                         desc=None, load_from_cache_file=False, keep_in_memory=True)
    statuses = list(converted["status"])
    stats = {"rows": len(rows), "row_format": row_format,
             "truncated_examples": statuses.count(TRUNCATED),
             "dropped_long_examples": statuses.count(DROPPED_LONG),
             "dropped_cut_off_examples": statuses.count(CUT_OFF)}
    kept = converted.filter(lambda status: status in (KEPT, TRUNCATED), input_columns="status", keep_in_memory=True)
    return kept.remove_columns("status"), stats
