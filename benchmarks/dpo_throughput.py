"""DPO throughput: loratk against TRL's DPOTrainer, in one run, same model, pairs and LoRA.

    python benchmarks/dpo_throughput.py                      # embedded SmolLM2-135M, 40 pairs
    python benchmarks/dpo_throughput.py --pairs 80 --repeats 2 --model ./my-model

Configurations (LoRA rank 8, alpha 16, all seven projections, dropout 0 (TRL switches dropout
off); beta 0.1, sigmoid loss, the reference is the base with the adapter disabled; 4 pairs per
step; max length 512; one epoch; the precision loratk picks for this machine, for both):
  loratk           `loratk train --method dpo` defaults: chosen and rejected packed in one row
                   without padding, per-example attention, chunked answer log-probs
  trl              TRL DPOTrainer + peft_config, gradient checkpointing off (its fastest).
                   TRL 1.16 falls back to padded batches when asked for padding_free, so padded
                   it is; its lm head is fused (``fused_lm_head``)
  trl-checkpointed the same with TRL's default gradient checkpointing (its least memory)
Each configuration runs in its own process (peak resident memory is its own, or on a GPU the
peak allocated memory); repeats are interleaved. Rates count from the end of the first optimizer
step to the end of training; pairs/s is pairs trained over those seconds, and pairs per
CPU-second the same over the process's CPU time (less sensitive to other work on a shared machine).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, run_worker  # benchmarks/machine.py, beside this script

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = ("loratk", "trl", "trl-checkpointed")
BATCH = 4
MAX_LEN = 512


def build_pairs(path: Path, count: int) -> None:
    """Prompt / chosen / rejected rows from the standard library's docstrings: variable lengths, real text.
    The chosen answer is a function's own docstring, the rejected one another function's."""
    import importlib

    docs = []
    for module_name in ("json", "pathlib", "collections", "itertools", "functools", "textwrap", "argparse",
                        "shutil", "statistics", "datetime", "random", "re", "string", "csv"):
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) and not name.startswith("_") else None
            if doc and len(doc) >= 80:
                docs.append((f"{module_name}.{name}", doc[:900]))
    rows = [{"prompt": f"Explain what {name} does in Python.\n", "chosen": doc,
             "rejected": docs[(i + 7) % len(docs)][1][: 200 + 50 * (i % 9)]}
            for i, (name, doc) in enumerate(docs[:count])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_loratk(model: str, data: str, out: str) -> dict:
    from rich.console import Console

    from loratk.config.train_config import TrainConfig
    from loratk.engine.training.run import train

    config = TrainConfig(model_name_or_path=model, dataset_path=[data], output_dir=out, method="dpo",
                         num_train_epochs=1, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                         max_seq_length=MAX_LEN, target_modules=",".join(TARGETS), lora_dropout=0.0,
                         save_steps=10**6, logging_steps=10**6)
    summary = train(config, Console(file=open(os.devnull, "w"))).summary
    return {"precision": summary["precision"], "pairs": summary["train_examples"]}


def run_trl(model: str, data: str, out: str, precision: str, checkpointing: bool) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from loratk.engine.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    rows = load_dataset("json", data_files=data, split="train")
    args = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, max_length=MAX_LEN,
                     bf16=precision == "bf16", use_cpu=not _cuda(), report_to=[], save_strategy="no",
                     logging_steps=10**6, disable_tqdm=True, gradient_checkpointing=checkpointing, beta=0.1,
                     loss_type=["sigmoid"])
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    dtype = "bfloat16" if precision == "bf16" else "float32"  # as loratk stores the frozen base
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=dtype), args=args,
                         train_dataset=rows, processing_class=load_tokenizer(path), peft_config=lora)
    trainer.train()
    return {"precision": precision, "pairs": len(trainer.train_dataset)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def step_clock():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        marks: dict[str, tuple[float, int]] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.marks["warm"] = time.perf_counter(), state.global_step, time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.marks["end"] = time.perf_counter(), state.global_step, time.process_time()

    return StepClock


def worker(name: str, model: str, data: str, precision: str) -> None:
    import transformers.trainer

    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    clock = step_clock()
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)
    with tempfile.TemporaryDirectory() as out:
        if name == "loratk":
            result = run_loratk(model, data, out)
        else:
            result = run_trl(model, data, out, precision, checkpointing=name == "trl-checkpointed")
    (warm, first, warm_cpu), (end, last, end_cpu) = clock.marks["warm"], clock.marks["end"]
    result.update(steps=last, seconds=end - warm, cpu_seconds=end_cpu - warm_cpu, pairs_timed=min((last - first) * BATCH, result["pairs"] - BATCH),
                  peak_mb=peak_memory_mb())
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.data, args.precision)

    from loratk.engine.models.precision import choose_precision

    precision = choose_precision(None, False)
    work = Path(tempfile.mkdtemp(prefix="loratk-dpo-bench-"))
    data = work / "pairs.jsonl"
    build_pairs(data, args.pairs)
    configs = [c for c in args.configs.split(",") if c]
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for repeat in range(args.repeats):
        for name in configs:
            result = run_worker(__file__, name, ["--model", args.model, "--data", str(data), "--precision", precision])
            if result is None:
                continue
            result["rate"] = result["pairs_timed"] / result["seconds"]
            result["cpu_rate"] = result["pairs_timed"] / result["cpu_seconds"]
            results[name].append(result)
            print(f"repeat {repeat + 1}: {name:16s} {result['rate']:6.3f} pairs/s  {result['peak_mb']:7.0f} MB",
                  file=sys.stderr)

    memory_kind = "peak allocated MB" if _cuda() else "peak RSS MB"
    print(f"\nmachine: {describe()}")
    print(f"model: {args.model}; {args.pairs} pairs, {BATCH} per step, max length {MAX_LEN}, {precision}; "
          f"{args.repeats} interleaved repeat(s)\n")
    print(f"| config | pairs/s | pairs per CPU-second | {memory_kind} | speed vs trl | CPU-time speed vs trl "
          "| memory vs trl |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results.get("trl") or []
    base_rate = statistics.median(r["rate"] for r in base) if base else None
    base_mem = statistics.median(r["peak_mb"] for r in base) if base else None
    base_cpu = statistics.median(r["cpu_rate"] for r in base) if base else None
    for name in configs:
        if not results[name]:
            print(f"| {name} | failed | | | | | |")
            continue
        rate = statistics.median(r["rate"] for r in results[name])
        memory = statistics.median(r["peak_mb"] for r in results[name])
        speed = f"{rate / base_rate:.2f}x" if base_rate else "-"
        mem = f"{memory / base_mem:.2f}x" if base_mem else "-"
        cpu_rate = statistics.median(r["cpu_rate"] for r in results[name])
        cpu_speed = f"{cpu_rate / base_cpu:.2f}x" if base_cpu else "-"
        print(f"| {name} | {rate:.3f} | {cpu_rate:.3f} | {memory:.0f} | {speed} | {cpu_speed} | {mem} |")


if __name__ == "__main__":
    main()
