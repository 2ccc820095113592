"""``loratk export``: a fine-tuned model as a file llama.cpp, Ollama or another runtime loads (GGUF built in)."""

from __future__ import annotations

import click

from loratk.cli.generate import spellings
from loratk.cli.merge import COMBINATIONS, parse_weights

EXAMPLES = """
\b
Examples:
  loratk export --adapter out/final                          # out-f16.gguf, verified
  loratk export --adapter out/final --outtype q8_0 --output model.gguf --ollama
  loratk export --adapter out/final --format gguf-adapter    # out-lora-f16.gguf
  loratk export --model HuggingFaceTB/SmolLM2-135M-Instruct --output base.gguf
  loratk export --adapter a/final --adapter b/final --weights 0.7,0.3 --outtype q4_0
\b
Then:  llama-cli -m model.gguf -cnv      or      ollama create mymodel -f model.Modelfile
"""


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]PATH",
              help="A PEFT adapter folder (e.g. OUTPUT_DIR/final); repeat to combine several.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="File to write (default: ADAPTER-OUTTYPE.gguf here); it appears only once written and verified.")
@click.option("--format", "fmt", default="gguf", show_default=True,
              help="gguf (the merged model), gguf-adapter (the adapter alone), or one a plugin adds.")
@click.option("--outtype", default="f16", show_default=True, help="f32, f16, bf16, q8_0 or q4_0 (gguf-adapter: f32/f16/bf16).")
@click.option(*spellings("model_name_or_path"), "--model", "model",
              help="Base model (default: the adapter's base); alone, without --adapter, it exports the base.")
@click.option("--ollama", is_flag=True, help="Also write an Ollama Modelfile beside the GGUF.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Read the file back and check its tokenizer, tensors and logits against the merged model.")
@click.option("--weights", help="Comma-separated weight per adapter for combinations, e.g. 0.7,0.3 (default: equal).")
@click.option("--combination", type=click.Choice(COMBINATIONS), help="How to combine several adapters (default linear).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (only once the new one is complete).")
@click.option(*spellings("trust_remote_code"), "trust_remote_code", is_flag=True, help="Allow the model's own Python code.")
def export(adapters, output, fmt, outtype, model, ollama, verify, weights, combination, overwrite, trust_remote_code) -> None:
    """Export LoRA adapters merged into their base (or alone) for llama.cpp, Ollama and other runtimes."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from loratk.engine.export.exporting import export as run_export
    from loratk.engine.models.adapters import parse_adapter_specs

    console = Console(stderr=True)
    specs = parse_adapter_specs(adapters)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("writing tensors", start=False, visible=False)

        def progress(done: int, total: int) -> None:
            bar.start_task(task)
            bar.update(task, completed=done, total=total, visible=True)

        result = run_export(specs, output, format=fmt, outtype=outtype, verify=verify, ollama=ollama,
                            overwrite=overwrite, combination=combination, weights=parse_weights(weights),
                            model_name_or_path=model, trust_remote_code=trust_remote_code, progress=progress,
                            log=lambda text: console.print(f"[dim]{text}[/dim]", highlight=False, soft_wrap=True))
    print_summary(result, verify)


def print_summary(result, verify: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    details = result.details
    table = Table(title=f"loratk export ({result.format})")
    for column in ("file", "size", "outtype", "tensors", "verification"):
        table.add_column(column, overflow="fold")
    for index, path in enumerate(result.paths):
        first = index == 0
        checked = details.get("verification") or ("skipped (--no-verify)" if not verify else "-")
        table.add_row(str(path), f"{path.stat().st_size / 2**20:,.1f} MiB" if path.stat().st_size > 2**20
                      else f"{path.stat().st_size / 2**10:,.1f} KiB",
                      str(details.get("outtype", "-")) if first else "-",
                      str(details.get("tensors", "-")) if first else "-", checked if first else "-")
    console = Console()
    console.print(table)
    for path in result.paths:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    source = ", ".join(result.adapters) if result.adapters else "no adapter"
    console.print(f"base {result.base_model}, {source}; peak memory "
                  f"{result.peak_memory.get('peak_rss_mb', 0):,.0f} MB resident", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    modelfiles = [p for p in result.paths if p.suffix == ".Modelfile"]
    for path in modelfiles:
        console.print(f"Ollama: ollama create {path.stem} -f {path}", highlight=False, soft_wrap=True)
