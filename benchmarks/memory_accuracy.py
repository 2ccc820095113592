"""How close is ``loratk estimate-memory`` to the measured peak of real training runs?

Runs ``loratk train`` (2 optimizer steps of 2 micro-batches, every example exactly
``max_seq_length`` tokens) for several settings, each in a fresh process, and measures the peak
of tensor allocations: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the running sum of the
PyTorch profiler's allocation/free events. It prints estimate vs measurement and the machine.
The estimate compared is the tensor peak (the CUDA context and allocator slack are left out,
as the measurement does not see them). Goal: every ratio within 0.85-1.15.

    python benchmarks/memory_accuracy.py            # all settings, a few minutes on 2 CPU cores
    python benchmarks/memory_accuracy.py --quick    # the three smallest settings
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py, beside this script

# name -> (model, options of loratk train)
LLAMA_SMALL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=32000)
LLAMA_WIDE = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=12,
                  num_key_value_heads=4, vocab_size=32000)
LLAMA_SMALL_VOCAB = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=2048)
SETTINGS = [
    ("llama-h256 fp32 b4 s256 r8", "small", dict(bf16=False, per_device_train_batch_size=4, max_seq_length=256)),
    ("llama-h256 bf16 b4 s256 r8", "small", dict(bf16=True, per_device_train_batch_size=4, max_seq_length=256)),
    ("llama-h256 fp32 ckpt b4 s256", "small", dict(bf16=False, gradient_checkpointing=True,
                                                    per_device_train_batch_size=4, max_seq_length=256)),
    ("llama-h256 4-bit bf16 b4 s256", "small", dict(bf16=True, use_4bit=True, per_device_train_batch_size=4,
                                                     max_seq_length=256)),
    ("llama-h256 bf16 b8 s512 (chunked loss)", "small", dict(bf16=True, per_device_train_batch_size=8,
                                                              max_seq_length=512)),
    ("llama-h768 bf16 b2 s512 r16 q,v", "wide", dict(bf16=True, lora_rank=16, target_modules="q_proj,v_proj",
                                                      per_device_train_batch_size=2, max_seq_length=512)),
    ("llama-h768 fp32 b8 s128 r64", "wide", dict(bf16=False, lora_rank=64, per_device_train_batch_size=8,
                                                  max_seq_length=128)),
    ("llama-h768 4-bit fp32 ckpt b2 s512", "wide", dict(bf16=False, use_4bit=True, gradient_checkpointing=True,
                                                         per_device_train_batch_size=2, max_seq_length=512)),
    ("llama-h512 V2k bf16 b4 s512 drop0", "small-vocab", dict(bf16=True, lora_dropout=0.0,
                                                               per_device_train_batch_size=4, max_seq_length=512)),
    ("llama-h512 V2k fp32 b4 s512 r32", "small-vocab", dict(bf16=False, lora_rank=32,
                                                             per_device_train_batch_size=4, max_seq_length=512)),
    ("llama-h256 8-bit bf16 b4 s256", "small", dict(bf16=True, use_8bit=True, per_device_train_batch_size=4,
                                                     max_seq_length=256)),
    ("SmolLM2-135M bf16 b2 s256", "smollm2-135m", dict(bf16=True, per_device_train_batch_size=2,
                                                        max_seq_length=256)),
    ("SmolLM2-135M bf16 ckpt b4 s512", "smollm2-135m", dict(bf16=True, gradient_checkpointing=True,
                                                             per_device_train_batch_size=4, max_seq_length=512)),
]
QUICK = SETTINGS[:3]
MODELS = {"small": LLAMA_SMALL, "wide": LLAMA_WIDE, "small-vocab": LLAMA_SMALL_VOCAB}
RUN = dict(max_steps=2, gradient_accumulation_steps=2, logging_steps=1, save_steps=1000, overwrite=True)


def build_llama(path: Path, shape: dict) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loratk.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = AutoConfig.for_model("llama", max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                                  tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_data(path: Path, rows: int = 8) -> Path:
    """Texts far longer than any max_seq_length, so every example is truncated to exactly that length."""
    rnd = random.Random(0)
    words = "alpha beta gamma delta river stone lamp seven orange quiet harbor bridge".split()
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(rows):
            handle.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(2500))}) + "\n")
    return path


def config_for(model: str, data: Path, out: Path, options: dict):
    from loratk.config.train_config import TrainConfig

    return TrainConfig.from_mapping(dict(model_name_or_path=model, dataset_path=[str(data)], output_dir=str(out),
                                         **RUN, **options))


def measure(model: str, data: Path, out: Path, options: dict) -> int:
    """Peak tensor bytes of one training run (called in a fresh process)."""
    from rich.console import Console

    from loratk.engine.memory.measure import measure_training_peak
    from loratk.engine.training.run import train

    config = config_for(model, data, out, options)
    with open(os.devnull, "w") as sink:
        return measure_training_peak(lambda after_load: train(config, Console(file=sink), after_load=after_load))


def estimate(model: str, data: Path, out: Path, options: dict, device: str) -> int:
    from loratk.engine.memory.estimate import estimate as estimate_memory
    from loratk.engine.memory.estimate import model_shape
    from loratk.engine.memory.report import default_attention, settings_for
    from loratk.engine.models.meta_model import build_meta_model

    meta = build_meta_model(model)
    config = config_for(model, data, out, options)
    settings = settings_for(meta.model, config, device=device, attn_implementation=default_attention(meta.model, config))
    return round(estimate_memory(model_shape(meta.model), settings).tensor_bytes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the three smallest settings")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: JSON job for a child process
    args = parser.parse_args()
    if args.measure:
        job = json.loads(args.measure)
        print(json.dumps({"peak": measure(job["model"], Path(job["data"]), Path(job["out"]), job["options"])}))
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="loratk-memory-"))
    data = write_data(tmp / "data.jsonl")
    built: dict[str, str] = {}
    rows = []
    print(f"machine: {describe()}", flush=True)
    header = f"{'setting':38} {'estimate MiB':>12} {'measured MiB':>12} {'ratio':>6}  {'seconds':>7}"
    print(header + "\n" + "-" * len(header), flush=True)
    for name, model_key, options in QUICK if args.quick else SETTINGS:
        if model_key in MODELS and model_key not in built:
            built[model_key] = str(build_llama(tmp / model_key, MODELS[model_key]))
        model = built.get(model_key, model_key)
        job = dict(model=model, data=str(data), out=str(tmp / "out"), options=options)
        started = time.time()
        child = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], capture_output=True,
                               text=True)
        if child.returncode != 0:
            print(f"{name:38} failed: {child.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        measured = json.loads(child.stdout.strip().splitlines()[-1])["peak"]
        estimated = estimate(model, data, tmp / "out", options, device)
        ratio = estimated / measured
        rows.append(ratio)
        print(f"{name:38} {estimated / 2**20:12,.1f} {measured / 2**20:12,.1f} {ratio:6.3f}  "
              f"{time.time() - started:7.1f}", flush=True)
    worst = max(rows, key=lambda r: abs(r - 1)) if rows else float("nan")
    print(f"\n{len(rows)} settings, worst ratio {worst:.3f} (goal: within 0.85-1.15)")
    return 0 if rows and all(0.85 <= r <= 1.15 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
