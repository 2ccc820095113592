"""Tokens per second of ``loratk generate`` against plain transformers ``generate``, same model, same run.

    python benchmarks/generate_speed.py                       # the embedded SmolLM2-135M
    python benchmarks/generate_speed.py --model ./some-model --max_new_tokens 128 --repeats 5

A LoRA adapter (random, non-zero) is made for the model and merged with ``loratk merge``'s engine.
Then the same greedy prompts run through each contender, interleaved prompt by prompt (rotating
who goes first) so that drifting clocks and other processes hit every contender alike:

- transformers: ``model.generate`` on the merged model, prompts rendered with ``apply_chat_template``;
- loratk: ``Session.generate`` on the same loaded model (what ``loratk generate --output`` runs);
- loratk streamed: the same with a streaming callback (what ``loratk generate`` runs in a terminal);
- loratk unmerged adapter: the base with the adapter applied by peft at run time.

Rates are generated tokens over wall time, the median of the rounds; ratios are to transformers.
The goal is loratk / transformers >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py, beside this script

PROMPTS = ["Write a short poem about the sea.", "Explain what a LoRA adapter is.",
           "List three uses of a paperclip.", "What should I cook tonight?"]


def make_adapter(base: str, folder: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)  # about the size training gives B
    model.peft_config["default"].base_model_name_or_path = base
    model.save_pretrained(folder)
    return folder


def plain_transformers(session, settings):
    """transformers on its own: chat template, greedy, the model's generation config for the stops."""
    import torch

    model, tokenizer = session.model, session.tokenizer

    def run(prompt: str) -> int:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False)
        return out.shape[1] - inputs["input_ids"].shape[1]

    return run


def loratk_runner(session, settings, stream: bool = False):
    def run(prompt: str) -> int:
        return session.generate(prompt, settings, on_text=(lambda _: None) if stream else None).new_tokens

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (on a busy machine 1 avoids oversubscription stalls)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from loratk.engine.models.adapters import parse_adapter_specs
    from loratk.engine.inference.generation import GenerationSettings, load_session
    from loratk.engine.inference.merging import merge
    from loratk.engine.models.loading import resolve_model_path

    base = resolve_model_path(args.model)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        specs = parse_adapter_specs([str(make_adapter(base, Path(tmp) / "adapter"))])
        merged = Path(tmp) / "merged"
        merge(specs, merged)
        merged_session = load_session([], str(merged), dtype=args.dtype)
        adapter_session = load_session(specs, base, dtype=args.dtype)
        contenders = {
            "transformers generate (merged)": plain_transformers(merged_session, settings),
            "loratk generate (merged)": loratk_runner(merged_session, settings),
            "loratk generate, streamed (merged)": loratk_runner(merged_session, settings, stream=True),
            "loratk generate (unmerged adapter)": loratk_runner(adapter_session, settings),
        }
        for run in contenders.values():  # warm-up: first calls pay for allocations and kernel choice
            run(PROMPTS[0])
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        tokens: dict[str, int] = {name: 0 for name in contenders}
        names = list(contenders)
        for round_number in range(args.repeats):
            spent = {name: 0.0 for name in names}
            counted = {name: 0 for name in names}
            for index, prompt in enumerate(PROMPTS):
                shift = (round_number + index) % len(names)  # rotate who goes first, prompt by prompt
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    counted[name] += contenders[name](prompt)
                    spent[name] += time.perf_counter() - start
            for name in names:
                rates[name].append(counted[name] / spent[name])
                tokens[name] = counted[name]
    report(rates, tokens, base, args)


def report(rates, tokens, base, args) -> None:
    from rich.console import Console
    from rich.table import Table

    baseline = statistics.median(rates["transformers generate (merged)"])
    table = Table(title=f"generate speed: {base}, {len(PROMPTS)} prompts x {args.max_new_tokens} new tokens max, "
                        f"median of {args.repeats}")
    for column in ("contender", "tokens", "tokens/s", "vs transformers"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, values in rates.items():
        rate = statistics.median(values)
        table.add_row(name, str(tokens[name]), f"{rate:,.1f}", f"{rate / baseline:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"machine: {describe()}")
    ratio = statistics.median(rates["loratk generate (merged)"]) / baseline
    console.print(f"goal loratk / transformers >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
