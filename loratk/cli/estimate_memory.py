"""``loratk estimate-memory``: will a LoRA/QLoRA run fit, and what takes the memory."""

from __future__ import annotations

import dataclasses
import json
import re

import click

from loratk.cli.options import config_option, explicit_values
from loratk.config.train_config import TrainConfig
from loratk.errors import UsageError

EXAMPLES = """
\b
Examples:
  loratk estimate-memory meta-llama/Llama-2-7b-hf --use_4bit --max_seq_length 2048
  loratk estimate-memory llama2-7b-4bit --gpu-memory 24GB        # a recipe's settings
  loratk estimate-memory Qwen/Qwen2.5-7B --per_device_train_batch_size 8 --gradient_checkpointing --json
  loratk estimate-memory ./my-model --device cpu --no-bf16
"""

TRAIN_OPTIONS = ("lora_rank", "lora_dropout", "target_modules", "use_4bit", "use_8bit", "quantization",
                 "max_seq_length", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "gradient_checkpointing", "bf16", "fp16", "packing", "trust_remote_code")
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
UNITS = {"": 2**30, "g": 2**30, "gb": 2**30, "gib": 2**30, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``24GB``, ``24 GiB``, ``80g``, ``16000MB`` -> bytes (GB means GiB, as GPU memory is sold)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise UsageError(f"--gpu-memory {text!r} is not an amount of memory",
                         "write it like 24GB, 80GiB or 16000MB")
    return int(float(match.group(1)) * UNITS[unit])


def train_options(command):
    for name in reversed(TRAIN_OPTIONS):
        command = config_option(FIELDS[name])(command)
    return command


@click.command("estimate-memory", epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.argument("model", required=False)
@train_options
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="Where the run trains (CPU: no CUDA context, train's CPU dtypes).")
@click.option("--optimizer", type=click.Choice(["adamw", "adamw-8bit", "sgd"]), default="adamw",
              show_default=True, help="Optimizer whose states are counted (loratk train uses adamw).")
@click.option("--attn-implementation", "--attn_implementation", "attn_implementation",
              type=click.Choice(["sdpa", "flash_attention_2", "eager", "loratk_varlen"]), default=None,
              help="Attention kernel (default: what loratk train uses: per-example attention over packed rows "
              "where exact, else the model's own).")
@click.option("--gpu-memory", "--gpu_memory", "gpu_memory", help="Memory of your GPU (e.g. 24GB): "
              "does the run fit, and the largest batch size and sequence length that do.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.pass_context
def estimate_memory(ctx: click.Context, model: str | None, device: str, optimizer: str,
                    attn_implementation: str | None, gpu_memory: str | None, as_json: bool, **params) -> None:
    """Estimate the peak memory of a LoRA/QLoRA training run of MODEL, without loading weights.

    MODEL is a local folder, a Hub id (popular models work offline from a built-in registry), a
    recipe name (its settings are the defaults) or left out for the embedded SmolLM2-135M. The
    options mean what they mean for 'loratk train'. The estimate is checked against measured
    peaks by benchmarks/memory_accuracy.py (docs/memory.md).
    """
    given = explicit_values(ctx, params)
    TrainConfig.from_mapping(given, "command line")  # bad numbers fail before anything is built
    budget = parse_memory(gpu_memory) if gpu_memory is not None else None

    from loratk.engine.memory.report import memory_report
    from loratk.engine.memory.shape_store import model_summary
    from loratk.engine.models.meta_model import locate_model

    ref = locate_model(model, bool(given.get("trust_remote_code")))
    summary = model_summary(ref)
    source = f"recipe {model} with command line" if ref.recipe_values else "command line"
    config = TrainConfig.from_mapping({**ref.recipe_values, **given}, source)
    report = memory_report(ref.shown, ref.source, summary, config, device=device, optimizer=optimizer,
                           attn_implementation=attn_implementation, budget=budget)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def _size(value: float) -> str:
    return f"{value / 2**30:,.2f} GiB" if value >= 2**30 else f"{value / 2**20:,.1f} MiB"


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    quant = s["quantization"] or "none"
    title = (f"{report['model']}: batch {s['batch_size']} x {s['seq_len']} tokens, rank {s['rank']}, "
             f"{s['precision']}, quantization {quant}{', checkpointing' if s['gradient_checkpointing'] else ''}"
             f" on {s['device']}")
    table = Table(title=title)
    table.add_column("component")
    table.add_column("memory", justify="right")
    table.add_column("what")
    for component in report["components"]:
        table.add_row(component["name"], _size(component["bytes"]), component["detail"])
    table.add_section()
    table.add_row("total (peak)", _size(report["total_bytes"]), f"at the {report['peak_phase']}", style="bold")
    console = Console()
    console.print(table)
    fit = report.get("fit")
    if fit:
        verdict = "[green]fits[/]" if fit["fits"] else "[red]does not fit[/]"
        console.print(f"{_size(fit['gpu_memory_bytes'])} GPU: {verdict} "
                      f"({100 * report['total_bytes'] / fit['gpu_memory_bytes']:.0f}% used)")
        batch, seq = fit["largest_batch_size"], fit["largest_seq_length"]
        console.print(f"largest batch size at {s['seq_len']} tokens: {batch or 'none (even 1 does not fit)'}")
        limit = " (the model's maximum)" if seq == fit["max_position_embeddings"] else ""
        console.print(f"longest sequence at batch size {s['batch_size']}: {seq or 'none (even 1 does not fit)'}{limit}")
