"""``loratk merge``: bake adapters into their base (checked), or combine several into a new adapter."""

from __future__ import annotations

import click

from loratk.cli.generate import spellings

EXAMPLES = """
\b
Examples:
  loratk merge --adapter out/final --output_dir merged
  loratk merge --adapter out/final --output_dir merged --dtype bf16 --max_shard_size 2GB
  loratk merge --adapter a/final --adapter b/final --weights 0.7,0.3 --combination ties --output_dir ab
  loratk merge --adapter a/final --adapter b/final --combination cat --adapter-only --output_dir ab-adapter
"""

COMBINATIONS = ("linear", "cat", "ties", "dare_ties", "svd")


def parse_weights(text: str | None) -> list[float] | None:
    from loratk.errors import UsageError

    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights {text!r} is not a comma-separated list of numbers", "write e.g. --weights 0.7,0.3") from None


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.option("--adapter", "adapters", multiple=True, required=True, metavar="[NAME=]PATH",
              help="A PEFT adapter folder (e.g. OUTPUT_DIR/final); repeat to combine several.")
@click.option(*spellings("output_dir"), "output_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write; it appears only once everything is written and verified.")
@click.option(*spellings("model_name_or_path"), "--model", "model", help="Base model (default: the adapter's base).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="dtype to merge in and save; fp32 is verified to 1e-4.")
@click.option(*spellings("max_shard_size"), "max_shard_size", default="5GB", show_default=True,
              help="Largest safetensors shard, e.g. 2GB or 500MB.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check that the merged model's logits match the adapter model's.")
@click.option("--weights", help="Comma-separated weight per adapter for combinations, e.g. 0.7,0.3 (default: equal).")
@click.option("--combination", type=click.Choice(COMBINATIONS),
              help="How to combine several adapters (peft add_weighted_adapter; default linear).")
@click.option("--adapter-only", "--adapter_only", "adapter_only", is_flag=True,
              help="Save the combined adapter as a new adapter instead of a merged model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
@click.option(*spellings("trust_remote_code"), "trust_remote_code", is_flag=True, help="Allow the model's own Python code.")
def merge(adapters, output_dir, model, dtype, max_shard_size, verify, weights, combination, adapter_only, overwrite,
          trust_remote_code) -> None:
    """Merge LoRA adapters into their (unquantized) base model and save it as a standalone model."""
    from rich.console import Console

    from loratk.engine.models.adapters import parse_adapter_specs
    from loratk.engine.inference.merging import merge as run_merge

    console = Console(stderr=True)
    specs = parse_adapter_specs(adapters)
    result = run_merge(specs, output_dir, dtype=dtype, max_shard_size=max_shard_size, verify=verify,
                       combination=combination, weights=parse_weights(weights), adapter_only=adapter_only,
                       overwrite=overwrite, model_name_or_path=model, trust_remote_code=trust_remote_code,
                       log=lambda text: console.print(f"[dim]{text}[/dim]", highlight=False))
    print_summary(result)


def print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loratk merge", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("base model", result.base_model)
    table.add_row("adapters", ", ".join(result.adapters))
    if result.combination:
        table.add_row("combination", f"{result.combination}, weights {', '.join(f'{w:g}' for w in result.weights)}")
    table.add_row("written", f"{'adapter' if result.adapter_only else 'merged model'} ({result.dtype}) in {result.output_dir}")
    if result.max_logit_diff is not None:
        table.add_row("verification", f"largest logit difference {result.max_logit_diff:.2e} "
                                      f"< {result.tolerance:.1e}: passed")
    elif not result.adapter_only:
        table.add_row("verification", "skipped (--no-verify)")
    for note in result.notes:
        table.add_row("note", note)
    table.add_row("peak memory", f"{result.peak_memory['peak_rss_mb']:,.0f} MB resident"
                  + (f", {result.peak_memory['cuda_max_allocated_mb']:,.0f} MB on the GPU"
                     if "cuda_max_allocated_mb" in result.peak_memory else ""))
    Console().print(table)
