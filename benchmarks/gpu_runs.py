"""What benchmarks/gpu_check.py runs in child processes: build a random Llama, or train it with
loratk or TRL's SFTTrainer once, timed after a warm-up step, with its peak memory.

    python benchmarks/gpu_runs.py '{"kind": "loratk", ...}'   # prints RESULT {...}; gpu_check.py calls it
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # this checkout's loratk, whatever is installed

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_llama(path: Path, shape: dict, cuda: bool) -> str:
    """A Llama of ``shape`` with random bf16 weights (made on the GPU, where there is one) and loratk's
    test tokenizer (one token per word: the GPU machine has no real tokenizer offline)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = word_tokenizer()
    config = AutoConfig.for_model("llama", eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                                  pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="10GB")
    tokenizer.save_pretrained(path)
    return str(path)


def run_loratk(job: dict, out: str) -> dict:
    from rich.console import Console

    from loratk.config.train_config import TrainConfig
    from loratk.engine.training.run import train

    config = TrainConfig(model_name_or_path=job["model"], dataset_path=[job["data"]], output_dir=out,
                         max_steps=job["steps"], per_device_train_batch_size=job["batch"],
                         gradient_accumulation_steps=1, max_seq_length=job["max_len"], target_modules=",".join(TARGETS),
                         lora_rank=8, lora_alpha=16, lora_dropout=0.05, learning_rate=1e-4, bf16=job["bf16"],
                         gradient_checkpointing=job["checkpointing"], save_steps=10**6, logging_steps=10**6,
                         use_4bit=job["quantized"])
    with open(os.devnull, "w") as sink:
        summary = train(config, Console(file=sink)).summary
    return {"attention": summary["attention"], "checkpointing": summary["gradient_checkpointing"]}


def run_trl(job: dict, out: str) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from loratk.engine.models.loading import resolve_model_path

    path = resolve_model_path(job["model"])
    dtype = torch.bfloat16 if job["bf16"] else torch.float32
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype) if job["quantized"] else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization,
                                                 device_map={"": 0} if torch.cuda.is_available() else None)
    args = SFTConfig(output_dir=out, max_steps=job["steps"], per_device_train_batch_size=job["batch"],
                     max_length=job["max_len"], packing=True, padding_free=True, bf16=job["bf16"],
                     gradient_checkpointing=job["checkpointing"], learning_rate=1e-4, report_to=[],
                     save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="all")
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=job["data"],
                                                                             split="train"),
                         processing_class=AutoTokenizer.from_pretrained(path), peft_config=lora)
    trainer.train()
    return {"attention": model.config._attn_implementation, "checkpointing": job["checkpointing"]}


def worker(job: dict) -> dict:
    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    if job["kind"] == "build":
        return {"path": build_llama(Path(job["path"]), job["shape"], job["cuda"])}
    import torch
    import transformers.trainer
    from train_throughput import step_clock, timed

    clock = step_clock()
    transformers.trainer.DEFAULT_CALLBACKS.append(clock)  # every Trainer of this process gets it
    try:
        with tempfile.TemporaryDirectory() as out:
            result = (run_loratk if job["kind"] == "loratk" else run_trl)(job, out)
    finally:
        transformers.trainer.DEFAULT_CALLBACKS.remove(clock)
    result.update(timed(clock.marks))
    if torch.cuda.is_available():
        result.update(allocated=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved())
    else:
        from loratk.engine.memory.measure import peak_memory_mb

        result.update(allocated=peak_memory_mb()["peak_rss_mb"] * 2**20, reserved=None)
    return result


def spawn(job: dict, timeout: float | None = None, in_process: bool = False) -> dict:
    """Run one worker job in a fresh process (``in_process``: in this one, as --smoke does to stay
    quick); its result, or {"error": the last lines of its stderr}."""
    if in_process:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the table's
                return worker(job)
        except (Exception, SystemExit) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[-400:]}
    try:
        proc = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": " | ".join(proc.stderr.strip().splitlines()[-3:])[-400:]}
    return json.loads(line[len("RESULT "):])


def word_tokenizer():
    from loratk.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


if __name__ == "__main__":
    print("RESULT " + json.dumps(worker(json.loads(sys.argv[1]))), flush=True)
