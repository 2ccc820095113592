"""Training throughput: loratk against the common script and TRL, in one run, same model and data.

    python benchmarks/train_throughput.py                 # embedded SmolLM2-135M, ~10k real tokens
    python benchmarks/train_throughput.py --repeats 3 --tokens 20000 --model ./my-model
    python benchmarks/train_throughput.py --max-seq-length 2048 --tokens 24000 --configs loratk \
        --no-ablations   # longer rows, same tokens per step

Configurations (same LoRA: rank 8, alpha 16, all seven projections; max_seq_length 512 unless
--max-seq-length says otherwise; one epoch over the same examples; 2048 row tokens per optimizer
step, i.e. 4 rows of 512):
  loratk        `loratk train` defaults (whatever they are at the time of the run)
  seed          transformers Trainer + peft, every example padded to max_seq_length (the original
                single-script way), fp32
  trl-fp32      TRL SFTTrainer, packing=True, padding_free=True, fp32
  trl-bf16      the same in bf16 autocast
and loratk with one of its means taken away at a time (--ablations, on by default), so each is
measured on its own:
  loratk-no-packing       padded batches instead of padding-free packing
  loratk-stacked-rows     a batch's packed rows stacked, each padded to the longest, instead of
                          concatenated into one row without padding
  loratk-masked-attention packed rows, but transformers' block-diagonal mask instead of
                          per-example attention
  loratk-flash-attention  per-example attention, every example through sdpa's flash kernel
                          instead of loratk's blocked batched-matmul kernel (bf16 on CPU)
  loratk-fp32             no bf16 autocast (fp32 base and compute)
  loratk-plain-loss       transformers' loss on full logits instead of the fused chunked loss
  loratk-peft-lora        peft's LoRA forward (a dropout mask and a dropped copy per module,
                          lora_B's product, the scaling and the sum as separate passes) instead of
                          loratk's fused LoRA layers
  loratk-unshared-input   fused LoRA layers, but q/k/v and gate/up each multiply their (shared)
                          input by their own lora_A instead of one stacked product
  loratk-plain-norm       transformers' RMSNorm (autograd's backward, an fp32 copy kept) instead
                          of loratk's frozen RMSNorm
  loratk-plain-mlp        transformers' gated MLP (silu(gate), gate and up kept) instead of
                          loratk's (gate and up kept, silu recomputed)
  loratk-checkpointing    gradient checkpointing forced on
and loratk with a LoRA variant (--variants, on by default), so its cost is known:
  loratk-dora             --use_dora (peft's DoRA forward: the fused LoRA layers do not apply)
  loratk-rslora           --use_rslora (only the scaling changes: the fused path as plain LoRA)
Each configuration runs in its own process (so peak resident memory is its own); repeats are
interleaved (a, b, c, d, a, b, c, d) so drift in machine load hits all alike. Every configuration
is timed the same way, from the end of its first optimizer step to the end of training, so the
rates are those of a long run; the first step (memory touched for the first time, kernels chosen
for new shapes, a library's one-time setup) is shown in its own column. The table shows the
median real (non-pad) tokens/s, the peak resident set, the ratio to loratk, and model FLOP
utilisation: LoRA training FLOPs per token (forward plus input-gradient backward through the
frozen base, 4 x matmul parameters, plus attention) x tokens/s, over the matmul peak measured
in the same run for that precision.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pydoc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, run_worker  # benchmarks/machine.py, beside this script

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = ("loratk", "seed", "trl-fp32", "trl-bf16")
# loratk with one mean taken away: (TrainConfig overrides, what to switch off in the engine)
ABLATIONS = {
    "loratk-no-packing": ({"packing": False}, None),
    "loratk-stacked-rows": ({}, "one-row"),
    "loratk-masked-attention": ({}, "attention"),
    "loratk-flash-attention": ({}, "matmul-attention"),
    "loratk-fp32": ({"bf16": False}, None),
    "loratk-plain-loss": ({}, "loss"),
    "loratk-peft-lora": ({}, "lora"),
    "loratk-unshared-input": ({}, "shared-input"),
    "loratk-plain-norm": ({}, "norm"),
    "loratk-plain-mlp": ({}, "mlp"),
    "loratk-checkpointing": ({"gradient_checkpointing": True}, None),
}
# loratk with a LoRA variant: TrainConfig overrides
VARIANTS = {
    "loratk-dora": {"use_dora": True},
    "loratk-rslora": {"use_rslora": True},
}
MAX_LEN = 512
TOKENS_PER_STEP = 2048
BATCH = TOKENS_PER_STEP // MAX_LEN
WARMUP_STEPS = 1  # optimizer steps before the clock starts


# -- data ------------------------------------------------------------------------------
def build_dataset(path: Path, tokens: int) -> int:
    """Instruction rows from the standard library's docstrings: variable length, real text."""
    import importlib

    rows, approx = [], 0
    for module_name in ("json", "pathlib", "collections", "itertools", "functools", "textwrap", "argparse",
                        "subprocess", "shutil", "statistics", "datetime", "random", "re", "string", "csv"):
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not name.startswith("_") else None
            if not doc or len(doc) < 80:
                continue
            prompt = f"Explain what {module_name}.{name} does in Python."
            completion = doc[:1600]
            rows.append({"prompt": prompt, "completion": completion})
            approx += (len(prompt) + len(completion)) // 4
            if approx >= tokens:
                break
        if approx >= tokens:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


# -- workers (each runs in its own process) ------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")


def switch_off(mean: str | None) -> None:
    """Take one of loratk's means away in this (worker) process."""
    if mean == "one-row":
        import loratk.engine.data.packing

        loratk.engine.data.packing.batches_as_one_row = lambda model: False
    elif mean == "attention":
        import loratk.engine.kernels.attention

        loratk.engine.kernels.attention.use_varlen_attention = lambda model, max_seq_length: False
    elif mean == "matmul-attention":
        import loratk.engine.kernels.matmul_attention

        loratk.engine.kernels.matmul_attention.applies = lambda query: False
    elif mean == "loss":
        import loratk.engine.training.trainer

        loratk.engine.training.trainer.head_weight_if_fusable = lambda model: None
    elif mean == "lora":
        import loratk.engine.kernels.fused_lora

        loratk.engine.kernels.fused_lora.fuse_lora_layers = lambda model: 0
    elif mean == "shared-input":
        from loratk.engine.kernels.shared_input import SharedInput

        SharedInput.take = lambda self, layer, x, key: None
        SharedInput.members = lambda self, owner, stamp: [owner]
    elif mean == "norm":
        import loratk.engine.kernels.fused_norm

        loratk.engine.kernels.fused_norm.fuse_rms_norms = lambda model: 0
    elif mean == "mlp":
        import loratk.engine.kernels.fused_mlp

        loratk.engine.kernels.fused_mlp.fuse_gated_mlps = lambda model: 0


def run_loratk(model: str, data: str, out: str, variant: str = "loratk") -> dict:
    from rich.console import Console

    from loratk.config.train_config import TrainConfig
    from loratk.engine.training.run import train

    overrides, mean = ABLATIONS.get(variant, (VARIANTS.get(variant, {}), None))
    switch_off(mean)
    config = TrainConfig(model_name_or_path=model, dataset_path=[data], output_dir=out, num_train_epochs=1,
                         per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_seq_length=MAX_LEN,
                         target_modules=",".join(TARGETS), save_steps=10**6, logging_steps=10**6, **overrides)
    summary = train(config, Console(file=open(os.devnull, "w"))).summary
    return {"precision": summary["precision"]}


def run_seed(model: str, data: str, out: str) -> dict:
    from datasets import load_dataset
    from peft import get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    from loratk.engine.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    rows = load_dataset("json", data_files=data, split="train")
    rows = rows.map(lambda r: tokenizer(r["prompt"] + "\n" + r["completion"], truncation=True, max_length=MAX_LEN,
                                        padding="max_length"), remove_columns=rows.column_names)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora_config())
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, use_cpu=not
                             _cuda(), report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                             include_num_input_tokens_seen="non_padding")  # from the attention mask
    trainer = Trainer(model=peft_model, args=args, train_dataset=rows,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    return {"precision": "fp32"}


def run_trl(model: str, data: str, out: str, bf16: bool) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from loratk.engine.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path)
    rows = load_dataset("json", data_files=data, split="train")
    args = SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, max_length=MAX_LEN,
                     packing=True, padding_free=True, bf16=bf16, use_cpu=not _cuda(), report_to=[],
                     save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                     include_num_input_tokens_seen="all")  # padding-free batches have no padding
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=rows,
                         processing_class=tokenizer, peft_config=lora_config())
    real = int(sum(len(ids) for ids in trainer.train_dataset["input_ids"]))
    trainer.train()
    if trainer.state.num_input_tokens_seen != real:
        raise SystemExit(f"TRL trained {trainer.state.num_input_tokens_seen} tokens, its dataset has {real}")
    return {"precision": "bf16" if bf16 else "fp32"}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def step_clock():
    """A Trainer callback that times training from the end of step ``WARMUP_STEPS`` on, with the
    real tokens the Trainer counts (``include_num_input_tokens_seen``)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        marks: dict[str, tuple[float, int]] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks["begin"] = time.perf_counter(), int(state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARMUP_STEPS:
                self.marks["warm"] = time.perf_counter(), int(state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, **kwargs):
            self.marks["end"] = time.perf_counter(), int(state.num_input_tokens_seen)

    return StepClock


def timed(marks: dict[str, tuple[float, int]]) -> dict:
    """The steady tokens and seconds after the warm-up, and the warm-up's seconds."""
    if "warm" not in marks or marks["end"][1] <= marks["warm"][1]:
        raise SystemExit(f"training ended within {WARMUP_STEPS} warm-up step(s); give more data with --tokens")
    return {"tokens": marks["end"][1] - marks["warm"][1], "seconds": marks["end"][0] - marks["warm"][0],
            "first_step_seconds": marks["warm"][0] - marks["begin"][0], "all_tokens": marks["end"][1]}


def worker(name: str, model: str, data: str) -> None:
    import transformers.trainer

    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    clock = step_clock()
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)  # every Trainer of this process gets it
    with tempfile.TemporaryDirectory() as out:
        if name == "loratk" or name in ABLATIONS or name in VARIANTS:
            result = run_loratk(model, data, out, name)
        elif name == "seed":
            result = run_seed(model, data, out)
        else:
            result = run_trl(model, data, out, bf16=name == "trl-bf16")
    result.update(timed(clock.marks), peak_rss_mb=peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: measure peak, run workers interleaved, print the table -------------------------------
def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul in this precision on this machine."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_token(model: str, avg_context: float) -> float:
    """LoRA training FLOPs per token: forward + input-gradient backward through the frozen base."""
    from loratk.engine.models.loading import load_config, resolve_model_path

    config = load_config(resolve_model_path(model))
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", h // heads)
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter
    matmul_params = layers * per_layer + h * config.vocab_size
    attention = layers * 2 * 2 * avg_context * heads * head_dim  # scores and weighted sum, causal half of 2x
    return 4 * matmul_params + 2 * attention


def main() -> None:
    global MAX_LEN, BATCH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", help="a prompt/completion JSONL file (default: built from stdlib docstrings)")
    parser.add_argument("--tokens", type=int, default=10000, help="approximate real tokens per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--no-ablations", dest="ablations", action="store_false",
                        help="skip the runs of loratk with one mean taken away")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="skip the runs of loratk with a LoRA variant (DoRA, rsLoRA)")
    parser.add_argument("--max-seq-length", type=int, default=MAX_LEN,
                        help=f"row length; rows per step = {TOKENS_PER_STEP} // this (default {MAX_LEN})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    MAX_LEN, BATCH = args.max_seq_length, max(1, TOKENS_PER_STEP // args.max_seq_length)
    if args.worker:
        return worker(args.worker, args.model, args.data)

    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    import torch

    work = Path(tempfile.mkdtemp(prefix="loratk-bench-"))
    data = Path(args.data) if args.data else work / "data.jsonl"
    if not args.data:
        build_dataset(data, args.tokens)
    configs = list(dict.fromkeys([c for c in args.configs.split(",") if c] + (list(ABLATIONS) if args.ablations else [])
                                 + (list(VARIANTS) if args.variants else [])))  # each once, named or implied
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")}
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for repeat in range(args.repeats):
        for name in configs:
            result = run_worker(__file__, name, ["--model", args.model, "--data", str(data),
                                                 "--max-seq-length", str(MAX_LEN)])
            if result is None:
                continue
            result["rate"] = result["tokens"] / result["seconds"]
            results[name].append(result)
            print(f"repeat {repeat + 1}: {name:9s} {result['rate']:8.1f} tok/s  {result['peak_rss_mb']:7.0f} MB  "
                  f"first step {result['first_step_seconds']:.1f} s", file=sys.stderr)

    lengths = [len(json.loads(l)["prompt"]) + len(json.loads(l)["completion"]) for l in data.read_text().splitlines()]
    per_token = flops_per_token(args.model, avg_context=statistics.mean(lengths) / 4 / 2)
    base = statistics.median(r["rate"] for r in results.get("loratk", [])) if results.get("loratk") else None
    print(f"\nmachine: {describe()}")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; "
          f"model: {args.model}; {len(lengths)} examples; rows of {MAX_LEN} tokens, {BATCH} per step; "
          f"{args.repeats} interleaved repeats\n")
    print("| config | precision | real tokens/s | peak RSS MB | speed vs loratk | memory vs loratk | MFU "
          "| first step s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_mem = statistics.median(r["peak_rss_mb"] for r in results["loratk"]) if results.get("loratk") else None
    for name in configs:
        if not results[name]:
            print(f"| {name} | failed | | | | | | |")
            continue
        rate = statistics.median(r["rate"] for r in results[name])
        memory = statistics.median(r["peak_rss_mb"] for r in results[name])
        precision = results[name][0]["precision"]
        mfu = rate * per_token / peaks.get(precision, peaks["fp32"])
        speed = f"{rate / base:.2f}x" if base else "-"
        mem = f"{memory / base_mem:.2f}x" if base_mem else "-"
        first = statistics.median(r["first_step_seconds"] for r in results[name])
        print(f"| {name} | {precision} | {rate:.1f} | {memory:.0f} | {speed} | {mem} | {100 * mfu:.0f}% | {first:.1f} |")


if __name__ == "__main__":
    main()
