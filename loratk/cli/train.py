"""``loratk train``: parse options, resolve the recipe, call the engine, print the summary."""

from __future__ import annotations

import json

import click

from loratk.cli.options import explicit_values, train_config_options

EXAMPLES = """
\b
Examples:
  loratk train examples/data.jsonl --output_dir out
  loratk train --recipe llama2-7b-4bit data.json --model_name_or_path ./Llama-2-7b-hf
  loratk train --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_path a.jsonl --dataset_path b.csv --use_4bit
  loratk train --recipe out/loratk_run.yaml --output_dir out2      # reproduce a run
  loratk train alpaca.json --dry-run          # see the trained (highlighted) and masked tokens
"""


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.argument("dataset", nargs=-1)
@click.option("--recipe", help="A recipe name (see 'loratk recipes') or a YAML file; flags override it.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Only load, format and tokenize the data (no model weights) and show what would be trained.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the data statistics as JSON.")
@train_config_options()
@click.pass_context
def train(ctx: click.Context, dataset: tuple[str, ...], recipe: str | None, dry_run: bool, as_json: bool,
          **params) -> None:
    """Fine-tune a causal LM with LoRA (or QLoRA) and save a PEFT adapter to OUTPUT_DIR/final.

    DATASET is a JSON/JSONL/CSV/Parquet/TXT file, a save_to_disk folder or a Hub dataset id
    (same as --dataset_path); rows are text, Alpaca, prompt/completion, messages or ShareGPT
    (see docs/data.md). With no model given, the embedded SmolLM2-135M-Instruct is used.
    """
    from loratk.config.recipes import resolve_config

    given = explicit_values(ctx, params)
    if dataset:
        given["dataset_path"] = [*dataset, *given.get("dataset_path", [])]
    config = resolve_config(recipe, given)

    from rich.console import Console

    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run")
    if dry_run:
        from loratk.engine.data.preview import dry_run as preview_data, print_report

        report = preview_data(config)
        if as_json:
            click.echo(json.dumps(report.stats, indent=2, ensure_ascii=False))
        else:
            print_report(report, Console())
        return

    from loratk.engine.training.run import train as run_training

    result = run_training(config, Console(stderr=True))
    if result.is_main_process:
        print_summary(result.summary, result.final_dir)


def print_summary(summary: dict, final_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loratk train", show_header=False)
    table.add_column(style="bold")
    table.add_column()

    def number(value, fmt="{:.4f}"):
        return "n/a" if value is None else fmt.format(value)

    rows = [
        ("base model", summary["base_model"]),
        ("examples", f"{summary['train_examples']} train, {summary['eval_examples']} eval, "
                     f"{summary['truncated_examples']} truncated, {summary.get('dropped_examples', 0)} dropped"),
        ("packing", ("on, each batch one row without padding" if summary.get("one_row_batches")
                     else f"on, {100 * summary['packing_efficiency']:.1f}% of token slots used" if summary.get("packing")
                     else summary.get("packing_note", "off"))),
        ("trainable parameters", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
                                 f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.3f}%)"),
        ("precision", summary["precision"]),
        ("gradient checkpointing", summary["gradient_checkpointing_reason"]),
        ("steps", f"{summary['steps']} (global batch {summary['global_batch_size']}, "
                  f"{summary['world_size']} process{'es' if summary['world_size'] > 1 else ''})"),
        ("final train loss", number(summary["train_loss"])),
        ("eval loss / perplexity", f"{number(summary['eval_loss'])} / {number(summary['eval_perplexity'], '{:.2f}')}"),
        *([("eval reward accuracy / margin", f"{summary['eval_rewards_accuracies']:.3f} / "
                                             f"{summary['eval_rewards_margins']:.3f}")]
          if "eval_rewards_accuracies" in summary else []),
        ("peak memory", f"{summary['peak_rss_mb']:,.0f} MB resident"),
        ("adapter", str(final_dir) + (f"\n{summary['adapter_form']}" if summary.get("adapter_form") else "")),
    ]
    if summary.get("lora"):
        rows.insert(4, ("LoRA", summary["lora"]))
    if summary.get("unfused_targets"):
        rows.insert(5, ("peft's forward", ", ".join(f"{t} ({why})" for t, why in summary["unfused_targets"].items())))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
