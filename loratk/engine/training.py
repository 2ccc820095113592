"""``loratk train`` end to end: validate everything, then train LoRA with the transformers Trainer.

Nothing is written to ``output_dir`` until the data, tokenizer, model and targets are known to be
good; the final adapter appears atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratk.config.recipes import RUN_FILE, dump_run_config
from loratk.config.train_config import TrainConfig
from loratk.engine.quiet import quiet_libraries
from loratk.errors import LoratkError, UsageError
from loratk.fileio import append_line, atomic_write_text


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder (one with trainer_state.json)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def check_output_dir(config: TrainConfig) -> Path | None:
    """Refuse to clobber a finished run; find the checkpoint to resume from."""
    from loratk.engine.outputs import has_finished_adapter

    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} is a file", "pass a folder path to --output_dir")
    if has_finished_adapter(out) and not (config.overwrite or config.resume):
        raise UsageError(f"output_dir {out} already holds a finished adapter (final/)",
                         "pass --overwrite to replace it, --resume to continue, or choose another --output_dir")
    if config.resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise UsageError(f"--resume: no checkpoint-N folder in {out}", "run without --resume to start afresh")
        return checkpoint
    return None


def check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".loratk-write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as exc:
        raise LoratkError(f"cannot write to output_dir {path}: {exc.strerror or exc}",
                          "choose a writable folder with free space for --output_dir") from exc


def peak_memory_mb() -> dict[str, float]:
    import torch

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        peak["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return peak


def attach_lora(model, config: TrainConfig, targets, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def training_arguments(config: TrainConfig, precision: str, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        use_cpu=not torch.cuda.is_available(),
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.logging_steps if has_eval else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        report_to=[] if config.report_to == "none" else [config.report_to],
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def train(config: TrainConfig, console) -> TrainResult:
    """Run one training job described by ``config``; progress goes to the rich ``console``."""
    quiet_libraries()
    import torch
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from loratk.engine.data.pipeline import prepare_data
    from loratk.engine.models import load_config, load_model, load_tokenizer, resolve_model_path
    from loratk.engine.outputs import CURVES_FILE, plot_curves, write_final_adapter
    from loratk.engine.precision import choose_precision
    from loratk.engine.reporting import MetricsFile, RichProgress
    from loratk.engine.targets import resolve_target_modules

    resume_from = check_output_dir(config)
    model_path = resolve_model_path(config.model_name_or_path)
    load_config(model_path, config.trust_remote_code)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    data = prepare_data(config, tokenizer)
    train_set, eval_set = data.train, data.eval
    precision = choose_precision(config.bf16, config.fp16)
    quantization = config.quantization_name
    on_gpu = torch.cuda.is_available()
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32") if on_gpu else (
        "bfloat16" if precision == "bf16" and quantization else "float32")
    device_map = {"": torch.cuda.current_device()} if on_gpu and quantization else None
    model = load_model(model_path, quantization=quantization, dtype=dtype,
                       trust_remote_code=config.trust_remote_code, device_map=device_map)
    model.config.use_cache = False
    targets = resolve_target_modules(model, config.target_module_list())

    # Everything is validated: from here on loratk writes to output_dir.
    out = Path(config.output_dir)
    check_writable(out)
    header = ("Written by loratk train. Reproduce this run with:\n"
              f"  loratk train --recipe {out / RUN_FILE}")
    atomic_write_text(out / RUN_FILE, dump_run_config(config, header))
    torch.manual_seed(config.seed)
    model = attach_lora(model, config, targets, quantized=quantization is not None)
    trainable, total = model.get_nb_trainable_parameters()
    metrics = MetricsFile(out)
    if resume_from is None:
        (out / metrics.path.name).unlink(missing_ok=True)
    trainer = Trainer(model=model, args=training_arguments(config, precision, eval_set is not None),
                      train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
                      data_collator=data.collator,
                      callbacks=[metrics, RichProgress(console)])
    trainer.remove_callback(PrinterCallback)  # loratk's progress bar replaces the dict printing
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_loss = None
    if eval_set is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
    train_losses = [r["loss"] for r in metrics.history if "loss" in r]
    summary = {
        "base_model": config.model_name_or_path or "smollm2-135m",
        "base_model_path": model_path,
        "datasets": list(config.dataset_path),
        "row_kind": data.kind,
        "train_examples": len(train_set),
        "eval_examples": 0 if eval_set is None else len(eval_set),
        **data.stats,
        "steps": output.global_step,
        "train_loss": train_losses[-1] if train_losses else output.training_loss,
        "mean_train_loss": output.training_loss,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(min(eval_loss, 50.0)) if eval_loss is not None else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "target_modules": targets,
        "precision": precision,
        "runtime_seconds": output.metrics.get("train_runtime"),
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        **peak_memory_mb(),
        "hyperparameters": {k: v for k, v in config.recorded().items() if k not in ("dataset_path", "output_dir")},
    }
    if trainer.is_world_process_zero():
        final = write_final_adapter(model, tokenizer, out, summary)
        append_line(metrics.path, json.dumps({"step": output.global_step, "summary": True,
                                              **{k: v for k, v in summary.items() if isinstance(v, (int, float))}}))
        plot_curves(metrics.history, out / CURVES_FILE)
    else:
        final = out / "final"
    return TrainResult(out, final, summary)
