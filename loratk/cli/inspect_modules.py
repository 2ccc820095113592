"""``loratk inspect-modules``: the Linear modules LoRA can target, and what a choice of targets trains."""

from __future__ import annotations

import dataclasses
import json

import click

from loratk.cli.options import config_option
from loratk.config.train_config import TrainConfig

EXAMPLES = """
\b
Examples:
  loratk inspect-modules                                   # the embedded SmolLM2-135M
  loratk inspect-modules meta-llama/Llama-2-7b-hf --lora_rank 16
  loratk inspect-modules Qwen/Qwen2.5-7B --target_modules q_proj,v_proj --json
  loratk inspect-modules ./my-model --tree
"""

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@click.command("inspect-modules", epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.argument("model", required=False)
@config_option(FIELDS["lora_rank"])
@config_option(FIELDS["target_modules"])
@config_option(FIELDS["trust_remote_code"])
@click.option("--tree", is_flag=True, help="Also print the full module tree.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
def inspect_modules(model: str | None, lora_rank: int, target_modules: str | None, trust_remote_code: bool,
                    tree: bool, as_json: bool) -> None:
    """Show MODEL's Linear modules, which ones LoRA targets, and how many parameters it trains.

    MODEL is a local folder, a Hub id (popular models work offline from a built-in registry),
    a recipe name, or left out for the embedded SmolLM2-135M. No weights are downloaded or loaded;
    registry models and models seen before answer at once, without importing torch.
    """
    config = TrainConfig.from_mapping({"lora_rank": lora_rank, "target_modules": target_modules}, "command line")

    from loratk.engine.memory.shape_store import model_summary
    from loratk.engine.models.meta_model import locate_model
    from loratk.engine.models.module_summary import module_report

    ref = locate_model(model, trust_remote_code)
    modules = model_summary(ref).modules
    report = module_report(ref.shown, ref.source, modules, config.target_module_list(), config.lora_rank, tree)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report['model']} ({report['model_type']}, from {report['source']})")
    for column in ("module", "in", "out", "count", "parameters", "LoRA target"):
        table.add_column(column, justify="left" if column in ("module", "LoRA target") else "right")
    for row in report["linear_modules"]:
        table.add_row(row["name"], f"{row['in_features']:,}", f"{row['out_features']:,}", str(row["count"]),
                      f"{row['parameters']:,}", "yes" if row["targeted"] else "")
    console.print(table)
    lora = report["lora"]
    console.print(f"default targets for {report['model_type']}: {', '.join(report['auto_targets'])}")
    targets = lora["target_modules"]
    console.print(f"targets: {targets if isinstance(targets, str) else ', '.join(targets)}; rank {lora['rank']}: "
                  f"{lora['trainable_parameters']:,} trainable of {report['total_parameters']:,} parameters "
                  f"({lora['trainable_percent']:.3f}%)")
    if report.get("tree"):
        tree = Table(title="module tree", show_header=True)
        tree.add_column("module")
        tree.add_column("class")
        tree.add_column("own parameters", justify="right")
        for row in report["tree"]:
            tree.add_row("  " * row["depth"] + row["name"].rsplit(".", 1)[-1], row["class"],
                         f"{row['parameters']:,}" if row["parameters"] else "")
        console.print(tree)
