"""``loratk train --dry-run``: the data as the model will see it, with the tokenizer only.

Loads, formats and tokenizes the data exactly as training does (through the same cache), decides
packing from the model's class and config (no weights are read), and shows the first examples
with the tokens that carry loss highlighted and the masked ones dimmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratk.config.train_config import TrainConfig
from loratk.engine.quiet import quiet_libraries

TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"


@dataclass
class DataReport:
    stats: dict[str, Any]
    # Per example: runs of (text, trained) in token order.
    examples: list[list[tuple[str, bool]]] = field(default_factory=list)
    # Preference data, per pair: the shared prompt, then the chosen and the rejected answer, as runs.
    pairs: list[tuple[list[tuple[str, bool]], ...]] = field(default_factory=list)


def token_runs(input_ids: list[int], labels: list[int], tokenizer, offset: int = 0) -> list[tuple[str, bool]]:
    """Consecutive tokens with the same trained/masked state, decoded together (so multi-byte
    characters split over tokens still read correctly). ``offset``: where the tokens start in their sequence."""
    from loratk.engine.data.tokenize import IGNORE_INDEX

    runs: list[tuple[list[int], bool]] = []
    for position, (token, label) in enumerate(zip(input_ids, labels)):
        trained = label != IGNORE_INDEX and position + offset > 0
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]


def predicted_packing_blocker(config: TrainConfig, model_path: str, one_row: bool = False) -> str | None:
    """Why the model (judged from its config and class, without weights) cannot pack exactly; with
    ``one_row`` (preference pairs), also why a batch could not run as one row with per-example
    attention, as training decides."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from loratk.engine.data.packing import class_packing_blocker
    from loratk.engine.models.attention_support import per_example_attention_blocker

    if config.packing is False:
        return "packing is off (--no-packing)"
    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.trust_remote_code)
    try:
        model_class = AutoModelForCausalLM._model_mapping[type(model_config)]
    except KeyError:
        blocker = None  # remote-code models are checked when they load
    else:
        blocker = class_packing_blocker(model_class, getattr(model_config, "_attn_implementation", None) or "sdpa")
    if blocker is None and one_row:
        blocker = per_example_attention_blocker(model_config, config.max_seq_length)
    return blocker


def dry_run(config: TrainConfig, examples_shown: int = 3) -> DataReport:
    quiet_libraries()
    from loratk.engine.data.packing import best_fit, padded_efficiency
    from loratk.engine.data.pipeline import prepare_data
    from loratk.engine.models.loading import known_quantization, load_tokenizer, resolve_model_path
    from loratk.engine.models.lora_variants import describe
    from loratk.engine.models.new_tokens import add_new_tokens

    if config.quantization_name:
        known_quantization(config.quantization_name)  # a real run would refuse it, so the preview does too
    model_path = resolve_model_path(config.model_name_or_path)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    new_token_ids = add_new_tokens(tokenizer, config.new_tokens, config.add_special_tokens)  # as training does
    data = prepare_data(config, tokenizer)
    stats = dict(data.stats, row_kind=data.kind, lora=describe(config))
    if new_token_ids:
        stats["new_token_ids"] = new_token_ids
    blocker = predicted_packing_blocker(config, model_path, one_row=data.pairs)
    if data.pairs:
        return _pair_report(data, stats, blocker, config, tokenizer, examples_shown)
    stats["packing"] = blocker is None
    stats["padded_efficiency"] = round(padded_efficiency(list(data.train["length"]),
                                                         config.per_device_train_batch_size), 4)
    if blocker is None:
        stats["packed_rows"] = len(best_fit(list(data.train["length"]), config.max_seq_length))
    else:
        stats["packing_efficiency"] = stats["padded_efficiency"]
        if config.packing is not False:
            stats["packing_note"] = f"not packing: {blocker}; using padded batches grouped by length"
    shown = data.train.select(range(min(examples_shown, len(data.train))))
    runs = [token_runs(row["input_ids"], row["labels"], tokenizer) for row in shown]
    return DataReport(stats, runs)


def _pair_report(data, stats, blocker, config, tokenizer, shown: int) -> DataReport:
    """A batch's pairs go through the model as 2B sequences in one row where loratk's per-example
    attention runs for the model (judged from its config, as training decides); padded otherwise."""
    from loratk.engine.data.packing import padded_efficiency
    from loratk.engine.data.preference import SIDES, prompt_length

    lengths = [len(ids) for side in SIDES for ids in data.train[f"{side}_input_ids"]]
    stats["padded_efficiency"] = round(padded_efficiency(lengths, 2 * config.per_device_train_batch_size), 4)
    stats["packing"] = blocker is None
    stats["packing_efficiency"] = 1.0 if stats["packing"] else stats["padded_efficiency"]
    if stats["packing"]:
        stats["packed_rows"] = -(-len(data.train) // config.per_device_train_batch_size)  # one per batch
    elif config.packing is not False:
        stats["packing_note"] = f"not packing: {blocker}; padded batches"
    pairs = []
    for row in data.train.select(range(min(shown, len(data.train)))):
        start = prompt_length(row["chosen_labels"])
        prompt = token_runs(row["chosen_input_ids"][:start], row["chosen_labels"][:start], tokenizer)
        answers = tuple(token_runs(row[f"{side}_input_ids"][start:], row[f"{side}_labels"][start:], tokenizer, start)
                        for side in SIDES)
        pairs.append((prompt, *answers))
    return DataReport(stats, pairs=pairs)


def print_report(report: DataReport, console) -> None:
    """Statistics, a length histogram and the first examples, to a rich console."""
    from rich.table import Table
    from rich.text import Text

    s = report.stats
    table = Table(title="loratk train --dry-run", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    lengths = s["token_lengths"]
    dropped = f"{s['dropped_long_examples']} too long (--drop_long), {s['dropped_cut_off_examples']} response cut off"
    for key, value in [
        ("row format", s["row_kind"]),
        ("examples", f"{s['examples']} of {s['rows']} rows ({s['train_examples']} train, {s['eval_examples']} eval)"),
        ("truncated", str(s["truncated_examples"])),
        ("dropped", dropped),
        ("tokens", f"{s['tokens']:,} ({s['trained_tokens']:,} trained)"),
        ("token lengths", f"min {lengths['min']}, median {lengths['median']}, mean {lengths['mean']}, "
                          f"p95 {lengths['p95']}, max {lengths['max']}"),
        ("packing", (f"on, {s['packed_rows']} packed row(s)" if s["packing"] else s.get("packing_note", "off"))
         + f"; efficiency {100 * s['packing_efficiency']:.1f}% (padded: {100 * s['padded_efficiency']:.1f}%)"),
        ("LoRA", s["lora"]),
    ]:
        table.add_row(key, value)
    console.print(table)
    widest = max(bin_["examples"] for bin_ in lengths["histogram"]) or 1
    for bin_ in lengths["histogram"]:
        bar = "█" * round(30 * bin_["examples"] / widest)
        console.print(f"{bin_['from']:>6}-{bin_['to']:<6} {bar} {bin_['examples']}", highlight=False)
    legend = Text.assemble(("trained", TRAINED_STYLE), " / ", ("masked (no loss)", MASKED_STYLE))
    for number, (prompt, chosen, rejected) in enumerate(report.pairs, 1):
        console.rule(Text.assemble(f"pair {number}: ", legend))
        for title, runs in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            console.print(Text.assemble((f"[{title}] ", "bold"), *[(text, TRAINED_STYLE if trained else MASKED_STYLE)
                                                                   for text, trained in runs]),
                          highlight=False, markup=False)
    for number, runs in enumerate(report.examples, 1):
        console.rule(Text.assemble(f"example {number}: ", legend))
        console.print(Text.assemble(*[(text, TRAINED_STYLE if trained else MASKED_STYLE) for text, trained in runs]),
                      highlight=False, markup=False)
