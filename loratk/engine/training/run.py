"""``loratk train`` end to end: validate everything, then train LoRA with the transformers Trainer.

Nothing is written to ``output_dir`` until the data, tokenizer, model and targets are known to be
good; the final adapter appears atomically. Under torchrun / accelerate launch only the main
process reports and writes; a first SIGINT/SIGTERM saves a checkpoint and stops cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loratk.config.recipes import RUN_FILE, dump_run_config
from loratk.config.train_config import TrainConfig
from loratk.engine.memory.measure import peak_memory_mb
from loratk.engine.quiet import quiet_libraries
from loratk.errors import Interrupted, LoratkError
from loratk.fileio import append_line, atomic_write_text


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    is_main_process: bool = True
    summary: dict[str, Any] = field(default_factory=dict)


def attach_lora(model, config: TrainConfig, targets, quantized: bool, autocast: bool = False,
                token_ids: list[int] = (), model_path: str | None = None):
    from peft import get_peft_model, prepare_model_for_kbit_training

    from loratk.engine.models.lora_variants import fit_loftq, lora_config
    from loratk.engine.models.new_tokens import trainable_token_indices

    from loratk.engine.kernels.fused_lora import fuse_lora_layers, learn_shared_inputs
    from loratk.engine.kernels.fused_mlp import fuse_gated_mlps
    from loratk.engine.kernels.fused_norm import fuse_rms_norms

    if quantized:
        import torch

        from loratk.engine.training.quantized_training import keep_training_layout

        keep_training_layout(model)  # an eval forward must not repack weights into a layout without backward
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        # peft upcasts what stays unquantized (embeddings, norms, head) for bitsandbytes only; do it
        # for every backend so those layers meet the fp32 adapters in fp32. Quantized tensors are
        # subclasses (or integer dtypes) and are left alone.
        for param in model.parameters():
            if param.dtype in (torch.float16, torch.bfloat16) and type(param.data) is torch.Tensor:
                param.data = param.data.float()
    elif config.gradient_checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(config, targets, trainable_token_indices(model, token_ids) if token_ids
                                              else None))
    if config.init_lora_weights == "loftq":
        fit_loftq(model, model_path)
    fuse_lora_layers(model)  # adapters summed in place; layers reading one input share one product
    fuse_rms_norms(model)  # frozen norms: closed-form backward, no fp32 copy kept
    fuse_gated_mlps(model)  # silu(gate) * up keeps gate and up, not silu(gate) too
    learn_shared_inputs(model)  # grouped from the first step on, so resumed runs repeat exactly
    if autocast:
        # Layers that keep peft's forward (DoRA and other variants) cast each adapter's input to
        # fp32 first; under autocast their matmuls run in bf16/fp16 anyway, so that copy is waste.
        # (The fused layers never make it.)
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    return model


def training_arguments(config: TrainConfig, precision: str, has_eval: bool, group_by_length: bool = False):
    import torch
    from transformers import TrainingArguments

    from loratk.engine.training.distributed import ddp_backend

    return TrainingArguments(
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=ddp_backend(),
        ddp_find_unused_parameters=False,  # every LoRA parameter takes part in every step
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        optim=config.optim,
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
        neftune_noise_alpha=config.neftune_noise_alpha,  # the Trainer adds it in training forwards only
        report_to=[] if config.report_to == "none" else [config.report_to],
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # evaluation needs the loss only, never the logits
        logging_nan_inf_filter=False,  # a non-finite loss stops the run (LoratkTrainer); never average it away
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",  # padded batches
    )


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume, drop metrics logged after the checkpoint so no step appears twice."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in records if r.get("step", 0) <= step and not r.get("summary")]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def resume_command(config: TrainConfig) -> str:
    return f"loratk train --recipe {Path(config.output_dir) / RUN_FILE} --resume"


def train(config: TrainConfig, console, after_load: Callable[[Any], None] | None = None) -> TrainResult:
    """Run one training job described by ``config``; progress goes to the rich ``console``.

    ``after_load(model)`` is called once the base model is loaded (measurements start there).
    """
    quiet_libraries()
    import torch
    from transformers.trainer_callback import PrinterCallback

    from loratk.engine.kernels.attention import use_varlen_attention
    from loratk.engine.memory.checkpointing_policy import choose_gradient_checkpointing
    from loratk.engine.training.checkpoints import MarkCompleteCheckpoints, discard_all, discard_incomplete, set_aside
    from loratk.engine.data.pipeline import prepare_data
    from loratk.engine.training.distributed import device_map_for_quantized, is_main_process, using_fsdp, world_size
    from loratk.engine.training.interrupts import StopOnSignal
    from loratk.engine.models.loading import load_config, load_model, load_tokenizer, resolve_model_path
    from loratk.engine.training.outputs import CURVES_FILE, plot_curves, write_final_adapter
    from loratk.engine.models.lora_variants import variant_summary
    from loratk.engine.models.precision import choose_precision
    from loratk.engine.training.preflight import (check_model_limits, check_optimizer, check_output_dir,
                                                  check_sharding, check_writable, checkpoints_at_peak, log_records,
                                                  space_needed, tokenizer_bytes)
    from loratk.engine.training.reporting import MetricsFile, RichProgress, warn
    from loratk.engine.models.targets import resolve_target_modules
    from loratk.engine.kernels.fused_lora import unfused_targets
    from loratk.engine.models.lora_variants import initial_state, rewrites_base
    from loratk.engine.models.new_tokens import add_new_tokens, grow_embeddings
    from loratk.engine.training.trainer import LoratkTrainer

    main = is_main_process()
    resume = check_output_dir(config)
    resume_from = resume.checkpoint if resume else None

    def show(message: str) -> None:  # once, not once per process
        if main:
            warn(console, message)

    if resume is not None:
        for path, problem in resume.damaged:
            show(f"{path.name} is damaged ({problem}); resuming from {resume_from.name} instead "
                 f"({path.name} is moved to damaged-{path.name})")
        if resume.changes is None:
            show(f"{RUN_FILE} is missing or unreadable: the settings cannot be checked against "
                 f"those {resume_from.name} was trained with")
        elif resume.changes:
            show(f"resuming {resume_from.name} with changed settings: {'; '.join(resume.changes)}")
    check_optimizer(config, torch.cuda.is_available())
    check_sharding(using_fsdp(), torch.cuda.is_available())
    model_path = resolve_model_path(config.model_name_or_path)
    for warning in check_model_limits(config, load_config(model_path, config.trust_remote_code)):
        show(warning)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    token_ids = add_new_tokens(tokenizer, config.new_tokens, config.add_special_tokens)  # before tokenizing the data
    data = prepare_data(config, tokenizer)
    precision = choose_precision(config.bf16, config.fp16)
    quantization = config.quantization_name
    # The frozen base is stored in the compute precision (half the memory, no per-step casts);
    # peft keeps the trainable adapters in fp32 as master weights.
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    model = load_model(model_path, quantization=quantization, dtype=dtype,
                       trust_remote_code=config.trust_remote_code,
                       device_map=device_map_for_quantized() if quantization else None,
                       quant_storage=dtype if using_fsdp() else None)
    if after_load is not None:
        after_load(model)
    if token_ids:
        grow_embeddings(model, len(tokenizer))
    model.config.use_cache = False  # padding-free batches need it, and training never uses the cache
    if config.packing is not False:
        use_varlen_attention(model, config.max_seq_length)  # per-example attention, where exact
    data.arrange_for(model, config.per_device_train_batch_size)  # packed where exact, else padded
    targets = resolve_target_modules(model, config.target_module_list())
    checkpointing, checkpointing_reason = choose_gradient_checkpointing(model, config)
    config = dataclasses.replace(config, gradient_checkpointing=checkpointing)
    torch.manual_seed(config.seed)
    model = attach_lora(model, config, targets, quantized=quantization is not None, autocast=precision != "fp32",
                        token_ids=token_ids, model_path=model_path)
    initial_adapter = initial_state(model) if rewrites_base(config) else None  # PiSSA/OLoRA: saved relative to it
    forward_paths = unfused_targets(model)
    trainable, total = model.get_nb_trainable_parameters()

    # Everything is validated: from here on loratk writes to output_dir (the main process only).
    out = Path(config.output_dir)
    metrics = MetricsFile(out)
    if main:
        by_reason: dict[str, list[str]] = {}
        for target, reason in forward_paths.items():
            by_reason.setdefault(reason, []).append(target)
        for reason, names in by_reason.items():
            console.print(f"peft's forward for {', '.join(names)} ({reason}), not loratk's fused LoRA layer")
        kept = checkpoints_at_peak(config, len(data.train), world_size())
        logged = log_records(config, len(data.train), data.eval is not None, world_size())
        check_writable(out, space_needed(trainable, kept, tokenizer_bytes(model_path), logged))
        discard_incomplete(out)
        if resume is not None:
            for path, _ in resume.damaged:
                set_aside(path)
        elif config.overwrite:
            discard_all(out)  # the earlier run's checkpoints must not mix with this run's
        header = f"Written by loratk train. Reproduce this run with:\n  loratk train --recipe {out / RUN_FILE}"
        if resume is not None and resume.changes:  # what ran before the checkpoint, and what runs now
            header += f"\nResumed from {resume_from.name} with changed settings: {'; '.join(resume.changes)}"
        atomic_write_text(out / RUN_FILE, dump_run_config(config, header))
        if resume_from is None:
            metrics.path.unlink(missing_ok=True)
        else:
            keep_metrics_until(metrics.path, resume.step)
    stopper = StopOnSignal()
    progress = RichProgress(console)
    trainer_class, extra = LoratkTrainer, {}
    if config.is_preference:
        from loratk.engine.training.preference_trainer import preference_trainer_options

        trainer_class, extra = preference_trainer_options(config, model, data, precision, model_path)
    trainer = trainer_class(model=model, args=training_arguments(config, precision, data.eval is not None,
                                                                 group_by_length=not data.stats["packing"]),
                            train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
                            data_collator=data.collator, loraplus_lr_ratio=config.loraplus_lr_ratio,
                            callbacks=[MarkCompleteCheckpoints(), metrics, progress, stopper], **extra)
    trainer.remove_callback(PrinterCallback)  # loratk's progress bar replaces the dict printing
    with stopper.installed(), progress.closed_on_exit():
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        trainer.raise_if_diverged()  # steps after the last log, before anything final is written
    if stopper.received is not None:
        raise Interrupted(f"training interrupted at step {trainer.state.global_step}; "
                          f"checkpoint saved in {out / f'checkpoint-{trainer.state.global_step}'}",
                          f"resume with: {resume_command(config)}", stopper.exit_code)
    evaluation = trainer.evaluate() if data.eval is not None else {}
    eval_loss = evaluation.get("eval_loss")
    train_losses = [r["loss"] for r in metrics.history if "loss" in r]
    summary = {
        "base_model": config.model_name_or_path or "smollm2-135m",
        "base_model_path": model_path,
        "datasets": list(config.dataset_path),
        "row_kind": data.kind,
        "train_examples": len(data.train),
        "eval_examples": 0 if data.eval is None else len(data.eval),
        **data.stats,
        "steps": output.global_step,
        "train_loss": train_losses[-1] if train_losses else output.training_loss,
        "mean_train_loss": output.training_loss,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(min(eval_loss, 50.0)) if eval_loss is not None and not config.is_preference
        else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "target_modules": targets,
        "precision": precision,
        "fused_loss": trainer.uses_fused_loss,
        "unfused_targets": forward_paths,
        **variant_summary(config, token_ids),
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_reason": checkpointing_reason,
        "attention": model.get_base_model().config._attn_implementation,
        "world_size": world_size(),
        "global_batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size(),
        "runtime_seconds": output.metrics.get("train_runtime"),
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        **peak_memory_mb(),
        **{k.replace("/", "_"): v for k, v in evaluation.items() if k.startswith("eval_rewards/")},
        "hyperparameters": {k: v for k, v in config.recorded().items() if k not in ("dataset_path", "output_dir")},
    }
    final = out / "final"
    if main:
        try:
            write_final_adapter(model, tokenizer, out, summary, initial_adapter)
        except OSError as exc:  # the temporary folder is gone again; an earlier final/ is untouched
            raise LoratkError(f"could not write the final adapter into {final}: {exc.strerror or exc}",
                              "free some space, then rerun with --resume (the checkpoints are intact)") from exc
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        append_line(metrics.path, json.dumps({"step": output.global_step, "summary": True, **numbers}))
        plot_curves(metrics.history, out / CURVES_FILE)
    return TrainResult(out, final, main, summary)
