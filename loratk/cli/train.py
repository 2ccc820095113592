"""``loratk train``: parse options, resolve the recipe, call the engine, print the summary."""

from __future__ import annotations

import click

from loratk.cli.options import explicit_values, train_config_options

EXAMPLES = """
\b
Examples:
  loratk train examples/data.jsonl --output_dir out
  loratk train --recipe llama2-7b-4bit data.json --model_name_or_path ./Llama-2-7b-hf
  loratk train --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_path a.jsonl --dataset_path b.csv --use_4bit
  loratk train --recipe out/loratk_run.yaml --output_dir out2      # reproduce a run
"""


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.argument("dataset", nargs=-1)
@click.option("--recipe", help="A recipe name (see 'loratk recipes') or a YAML file; flags override it.")
@train_config_options()
@click.pass_context
def train(ctx: click.Context, dataset: tuple[str, ...], recipe: str | None, **params) -> None:
    """Fine-tune a causal LM with LoRA (or QLoRA) and save a PEFT adapter to OUTPUT_DIR/final.

    DATASET is a JSON/JSONL/CSV/Parquet file, a save_to_disk folder or a Hub dataset id
    (same as --dataset_path). With no model given, the embedded SmolLM2-135M-Instruct is used.
    """
    from loratk.config.recipes import resolve_config

    given = explicit_values(ctx, params)
    if dataset:
        given["dataset_path"] = [*dataset, *given.get("dataset_path", [])]
    config = resolve_config(recipe, given)

    from rich.console import Console

    from loratk.engine.training import train as run_training

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
                     f"{summary['truncated_examples']} truncated"),
        ("trainable parameters", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
                                 f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.3f}%)"),
        ("precision", summary["precision"]),
        ("steps", f"{summary['steps']} (global batch {summary['global_batch_size']}, "
                  f"{summary['world_size']} process{'es' if summary['world_size'] > 1 else ''})"),
        ("final train loss", number(summary["train_loss"])),
        ("eval loss / perplexity", f"{number(summary['eval_loss'])} / {number(summary['eval_perplexity'], '{:.2f}')}"),
        ("peak memory", f"{summary['peak_rss_mb']:,.0f} MB resident"),
        ("adapter", str(final_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
