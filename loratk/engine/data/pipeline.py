"""From the run's options to batches: read the sources, tokenize, hold out eval data, collate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratk.config.train_config import TrainConfig
from loratk.errors import UsageError


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids and labels
    eval: Any | None
    collator: Any
    kind: str  # text, prompt_completion or messages
    stats: dict[str, Any] = field(default_factory=dict)


def split_eval(data, eval_split: float, seed: int):
    if eval_split <= 0:
        return data, None
    held_out = max(1, round(len(data) * eval_split))
    if held_out >= len(data):
        raise UsageError(f"eval_split {eval_split} leaves no training examples out of {len(data)}",
                         "lower --eval_split or add data")
    parts = data.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def prepare_data(config: TrainConfig, tokenizer) -> PreparedData:
    from loratk.engine.data.collate import PadCollator
    from loratk.engine.data.sources import load_sources
    from loratk.engine.data.tokenize import tokenize_dataset

    options = {"text_column": config.text_column, "dataset_config": config.dataset_config,
               "dataset_split": config.dataset_split, "seed": config.seed}
    rows = load_sources(config.dataset_path, options, config.dataset_format)
    tokenized, kind = tokenize_dataset(rows, tokenizer, config.text_column, config.max_seq_length)
    train, held_out = split_eval(tokenized, config.eval_split, config.seed)
    stats = {"rows": len(rows), "truncated_examples": int(sum(tokenized["truncated"])),
             "dropped_examples": len(rows) - len(tokenized)}
    return PreparedData(train, held_out, PadCollator(tokenizer.pad_token_id), kind, stats)
