"""``loratk generate``: talk to a base model and its adapters, one by one, side by side, or in a chat."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXAMPLES = """
\b
Examples:
  loratk generate --prompt "Hello!"                          # the embedded SmolLM2-135M
  loratk generate --adapter out/final --prompt "Hello!"      # base model from the adapter
  loratk generate --adapter a=out1/final --adapter b=out2/final --compare --prompt "Hi"
  loratk generate --adapter out/final --prompts-file prompts.jsonl --output answers.jsonl
  echo "Tell me a joke" | loratk generate --adapter out/final --do_sample --seed 7
  loratk generate --adapter a=out1/final --adapter b=out2/final --chat
"""


def spellings(name: str) -> list[str]:
    return [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]


def read_prompts_file(path: str) -> list:
    """A .txt file (one prompt a line) or JSONL rows with ``prompt`` (text) or ``messages`` (a chat)."""
    from loratk.errors import DataError
    from loratk.fileio import read_text

    try:
        lines = read_text(path).splitlines()
    except OSError as exc:
        raise DataError(f"cannot read prompts file {path}: {exc.strerror}", "check the path") from exc
    if not path.endswith((".jsonl", ".json")):
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path} line {number} is not JSON: {exc}", "write one JSON object a line") from exc
        value = row.get("messages", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(value, (str, list)) or not value:
            raise DataError(f"{path} line {number} has no 'prompt' text or 'messages' list", 'write {"prompt": "..."}')
        prompts.append(value)
    return prompts


def collect_prompts(prompt: tuple[str, ...], prompts_file: str | None, chat: bool) -> list:
    from loratk.errors import UsageError

    prompts: list = list(prompt)
    if prompts_file:
        prompts += read_prompts_file(prompts_file)
    if not prompts and not chat:
        stdin = click.get_text_stream("stdin")
        if not stdin.isatty():
            prompts = [line for line in stdin.read().splitlines() if line.strip()]
    if not prompts and not chat:
        raise UsageError("no prompt given", "pass --prompt TEXT, --prompts-file FILE, text on standard input, or --chat")
    return prompts


def quantization_name(use_4bit: bool, use_8bit: bool, quantization: str | None) -> str | None:
    from loratk.errors import UsageError

    implied = [name for flag, name in ((use_4bit, "bnb-4bit"), (use_8bit, "bnb-8bit")) if flag]
    if len(implied) > 1 or (implied and quantization and quantization != implied[0]):
        raise UsageError(f"conflicting quantization: {', '.join(implied + [quantization or ''])}".rstrip(", "),
                         "choose one of --use_4bit, --use_8bit, --quantization NAME")
    return quantization or (implied[0] if implied else None)


def show_prompt(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1].get("content", "")


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]PATH",
              help="A PEFT adapter folder (e.g. OUTPUT_DIR/final); repeat to load several onto one base.")
@click.option(*spellings("model_name_or_path"), "--model", "model", help="Base model (default: the adapter's base, else the embedded model).")
@click.option("--prompt", "prompts", multiple=True, help="A prompt; repeatable.")
@click.option("--prompts-file", "--prompts_file", "prompts_file", type=click.Path(dir_okay=False),
              help=".txt (one prompt a line) or .jsonl with 'prompt' or 'messages'.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write JSONL results here instead of streaming them.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@click.option("--chat-template/--no-chat-template", "chat_template", default=True,
              help="Render prompts with the tokenizer's chat template (as train did) or pass raw text.")
@click.option("--system", help="A system prompt.")
@click.option(*spellings("max_new_tokens"), "max_new_tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.7, show_default=True)
@click.option(*spellings("top_p"), "top_p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option(*spellings("top_k"), "top_k", type=click.IntRange(0), default=50, show_default=True)
@click.option(*spellings("repetition_penalty"), "repetition_penalty", type=click.FloatRange(min=0, min_open=True),
              default=1.0, show_default=True)
@click.option("--do_sample/--greedy", "--do-sample", "do_sample", default=False,
              help="Sample (with --temperature/--top_p/--top_k) or decode greedily (default).")
@click.option("--seed", type=int, help="Seed for sampling: the same seed gives the same text.")
@click.option("--compare", is_flag=True, help="Show the base model and every adapter side by side.")
@click.option("--chat", is_flag=True, help="Interactive chat; /help lists the commands.")
@click.option(*spellings("use_4bit"), "use_4bit", is_flag=True, help="Load the base in 4-bit NF4.")
@click.option(*spellings("use_8bit"), "use_8bit", is_flag=True, help="Load the base in 8-bit.")
@click.option("--quantization", help="Quantization backend by name (bnb-4bit, bnb-8bit, or a plugin's).")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Storage dtype of the base (auto: bf16 on a GPU, fp32 on CPU).")
@click.option(*spellings("trust_remote_code"), "trust_remote_code", is_flag=True, help="Allow the model's own Python code.")
def generate(adapters, model, prompts, prompts_file, output, overwrite, chat_template, system, max_new_tokens,
             temperature, top_p, top_k, repetition_penalty, do_sample, seed, compare, chat, use_4bit, use_8bit,
             quantization, dtype, trust_remote_code) -> None:
    """Generate text with a base model and LoRA adapters (streamed, compared, or as a chat)."""
    from loratk.errors import UsageError
    from loratk.fileio import blocked_parent

    if chat and (compare or output):
        raise UsageError("--chat cannot be combined with --compare or --output", "drop one of them")
    if output and Path(output).exists() and not overwrite:
        raise UsageError(f"output file {output} already exists", "pass --overwrite to replace it, or choose another --output")
    if output and blocked_parent(output):
        raise UsageError(f"--output {output} cannot be created: {blocked_parent(output)} is a file, not a folder",
                         "choose another --output")
    quant = quantization_name(use_4bit, use_8bit, quantization)
    prompt_list = collect_prompts(prompts, prompts_file, chat)

    from loratk.engine.models.adapters import parse_adapter_specs
    from loratk.engine.inference.generation import GenerationSettings, load_session

    specs = parse_adapter_specs(adapters)
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, seed)
    session = load_session(specs, model, quantization=quant, dtype=dtype,
                           trust_remote_code=trust_remote_code, use_chat_template=chat_template, system=system)
    if chat:
        from loratk.cli.chat import run_chat

        run_chat(session, settings)
        return
    targets = ([None] if compare or not session.adapters else []) + list(session.adapters)
    stream = not (compare or output)
    results = []
    for index, prompt in enumerate(prompt_list):
        row = []
        for target in targets:
            if stream:
                click.echo(f"--- prompt {index + 1} · {target or 'base'}: {show_prompt(prompt)}", err=True)
            row.append(session.generate(prompt, settings, target, on_text=write_now if stream else None))
            if stream:
                click.echo("")
        results.append(row)
    if output:
        write_jsonl(output, prompt_list, results)
        click.echo(f"wrote {sum(map(len, results))} generations to {output}", err=True)
    if compare:
        print_comparison(prompt_list, targets, results)


def write_now(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


def write_jsonl(path: str, prompts: list, results: list) -> None:
    from loratk.fileio import atomic_write_text

    rows = [json.dumps({"prompt": prompt, "adapter": g.adapter, "text": g.text, "new_tokens": g.new_tokens,
                        "stopped_at_end_of_turn": g.stopped_at_end_of_turn}, ensure_ascii=False)
            for prompt, row in zip(prompts, results) for g in row]
    atomic_write_text(path, "".join(line + "\n" for line in rows))


def print_comparison(prompts: list, targets: list, results: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loratk generate --compare", show_lines=True)
    table.add_column("prompt", style="bold")
    for target in targets:
        table.add_column(target or "base")
    for prompt, row in zip(prompts, results):
        table.add_row(show_prompt(prompt), *(g.text for g in row))
    Console().print(table)
