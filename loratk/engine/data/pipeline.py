"""From the run's options to batches: read the sources, tokenize (or reuse the cache), hold out
eval data, then pack (or pad) once the model is known."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from loratk.config.train_config import TrainConfig
from loratk.engine.data.examples import DataSettings
from loratk.errors import DataError, UsageError

COUNTS = ("rows", "truncated_examples", "dropped_long_examples", "dropped_cut_off_examples")


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset: input_ids, labels, length (packed rows also position_ids)
    eval: Any | None
    collator: Any
    kind: str  # the row formats, e.g. "messages" or "alpaca+text"
    stats: dict[str, Any] = field(default_factory=dict)
    packing: bool | None = None  # asked for: True, False, or None (wherever it is exact)
    max_seq_length: int = 512
    pad_token_id: int = 0

    def arrange_for(self, model, batch_size: int = 1) -> None:
        """Pack the examples when that is exact for ``model`` (and wanted), else pad them."""
        from loratk.engine.data.collate import PadCollator
        from loratk.engine.data.packing import (PackedCollator, batches_as_one_row, pack_rows, packing_blocker,
                                                padded_efficiency)

        blocker = packing_blocker(model) if self.packing is not False else "packing is off (--no-packing)"
        if self.packing is not False and blocker:
            self.stats["packing_note"] = f"not packing: {blocker}; using padded batches grouped by length"
        if blocker is None:
            self.train = pack_rows(self.train, self.max_seq_length)
            self.eval = pack_rows(self.eval, self.max_seq_length) if self.eval is not None else None
            one_row = batches_as_one_row(model)
            self.collator = PackedCollator(self.pad_token_id, one_row=one_row)
            if one_row:  # nothing is padded
                self.stats.update(packing_efficiency=1.0, one_row_batches=True)
        else:
            self.collator = PadCollator(self.pad_token_id)
            self.stats["packing_efficiency"] = round(padded_efficiency(list(self.train["length"]), batch_size), 4)
        self.stats["packing"] = blocker is None


def data_settings(config: TrainConfig) -> DataSettings:
    from loratk.engine.data.formats import ROW_FORMATS

    forced = config.dataset_format if config.dataset_format in ROW_FORMATS else None
    return DataSettings(config.max_seq_length, config.text_column, config.train_on_inputs, config.drop_long, forced)


def load_examples(sources: Sequence[str], config: TrainConfig, tokenizer):
    """Every source tokenized and concatenated: (examples, stats, row formats)."""
    from datasets import concatenate_datasets

    from loratk.engine.data.cache import cache_key, cached, content_fingerprint, tokenizer_fingerprint
    from loratk.engine.data.examples import tokenize_source
    from loratk.engine.data.formats import ROW_FORMATS
    from loratk.engine.data.sources import load_source

    if not sources:
        raise UsageError("no dataset given", "pass a data file, e.g. loratk train data.jsonl (or --dataset_path)")
    settings = data_settings(config)
    file_format = None if config.dataset_format in ROW_FORMATS else config.dataset_format
    options = {"text_column": config.text_column, "dataset_config": config.dataset_config,
               "dataset_split": config.dataset_split, "seed": config.seed}
    tokenizer_fp = tokenizer_fingerprint(tokenizer)
    parts, totals, formats, hits = [], dict.fromkeys(COUNTS, 0), [], 0
    for source in sources:
        rows = None
        fingerprint = content_fingerprint(source)
        if fingerprint is None:  # a Hub id or plugin source: datasets' own fingerprint
            rows = load_source(source, options, file_format)
            fingerprint = rows._fingerprint
        recipe = {**settings.as_dict(), "source_format": file_format,
                  **{k: v for k, v in options.items() if k != "seed"}}
        key = cache_key(fingerprint, tokenizer_fp, recipe)

        def build(source=source, rows=rows):
            rows = rows if rows is not None else load_source(source, options, file_format)
            return tokenize_source(rows, source, tokenizer, settings)

        examples, stats, hit = cached(key, build)
        hits += hit
        parts.append(examples)
        formats.append(stats["row_format"])
        for name in COUNTS:
            totals[name] += stats[name]
    examples = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if len(examples) == 0:
        raise DataError(why_all_dropped(totals, config),
                        "raise --max_seq_length" + (", or leave out --drop_long to truncate" if config.drop_long else ""))
    totals["cached_sources"] = hits
    return examples, totals, "+".join(dict.fromkeys(formats))


def why_all_dropped(totals: dict[str, int], config: TrainConfig) -> str:
    reasons = []
    if totals["dropped_long_examples"]:
        reasons.append(f"{totals['dropped_long_examples']} longer than max_seq_length {config.max_seq_length} (--drop_long)")
    if totals["dropped_cut_off_examples"]:
        reasons.append(f"{totals['dropped_cut_off_examples']} whose response starts after token "
                       f"{config.max_seq_length} (max_seq_length), so nothing of it is left to learn")
    return f"every one of the {totals['rows']} examples was dropped: " + "; ".join(reasons)


def split_eval(data, eval_split: float, seed: int):
    if eval_split <= 0:
        return data, None
    held_out = max(1, round(len(data) * eval_split))
    if held_out >= len(data):
        raise UsageError(f"eval_split {eval_split} leaves no training examples out of {len(data)}",
                         "lower --eval_split or add data")
    parts = data.train_test_split(test_size=held_out, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def length_stats(lengths: list[int], bins: int = 8) -> dict[str, Any]:
    ordered = sorted(lengths)
    width = max(1, -(-ordered[-1] // bins))
    histogram = [0] * bins
    for length in ordered:
        histogram[min((length - 1) // width, bins - 1)] += 1
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "median": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1],
            "histogram": [{"from": i * width + 1, "to": (i + 1) * width, "examples": count}
                          for i, count in enumerate(histogram)]}


def prepare_data(config: TrainConfig, tokenizer) -> PreparedData:
    """Tokenized, length-checked train (and eval) examples with their statistics; padded batches
    until :meth:`PreparedData.arrange_for` sees the model."""
    from loratk.engine.data.collate import PadCollator
    from loratk.engine.data.packing import packing_efficiency
    from loratk.engine.data.tokenize import target_count

    examples, stats, kind = load_examples(config.dataset_path, config, tokenizer)
    if config.eval_dataset_path:
        train, held_out = examples, load_examples(config.eval_dataset_path, config, tokenizer)[0]
    else:
        train, held_out = split_eval(examples, config.eval_split, config.seed)
    lengths = list(examples["length"])
    stats.update({
        "examples": len(examples),
        "train_examples": len(train),
        "eval_examples": 0 if held_out is None else len(held_out),
        "dropped_examples": stats["dropped_long_examples"] + stats["dropped_cut_off_examples"],
        "tokens": sum(lengths),
        "trained_tokens": sum(target_count(labels) for labels in examples["labels"]),
        "token_lengths": length_stats(lengths),
        "packing_efficiency": round(packing_efficiency(list(train["length"]), config.max_seq_length), 4),
        "packing": False,  # until arrange_for() sees the model
    })
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return PreparedData(train, held_out, PadCollator(pad), kind, stats, config.packing, config.max_seq_length, pad)
