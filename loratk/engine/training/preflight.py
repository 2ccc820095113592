"""Checks made before any training work: the output folder, the model's limits, space to write.

None of them writes anything; a refused run leaves the disk as it found it.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path

from loratk.config.train_config import TrainConfig
from loratk.engine.training.checkpoints import checkpoints
from loratk.engine.training.outputs import has_finished_adapter
from loratk.engine.training.reporting import METRICS_FILE
from loratk.engine.training.resume import ResumePlan, plan_resume
from loratk.errors import LoratkError, UsageError

# Bytes per trainable parameter: the fp32 adapter, and AdamW's two fp32 moments beside it in a checkpoint.
ADAPTER_BYTES_PER_PARAMETER = 4
OPTIMIZER_BYTES_PER_PARAMETER = 8
# What each checkpoint holds besides tensors and the tokenizer (trainer state, scheduler, RNG
# states, training arguments, model card), and the run's own files (metrics, curves, summary).
CHECKPOINT_EXTRA_BYTES = 64 * 2**10
RUN_EXTRA_BYTES = 256 * 2**10
# One logged step: a line of metrics.jsonl, and a record of the log history every checkpoint's
# trainer_state.json repeats (indented JSON); DPO's rewards and log-probs make the longest, about
# 520 bytes in the log history and up to 750 in metrics.jsonl (an evaluation's line).
LOG_RECORD_BYTES = 1024
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "vocab.txt")


def check_output_dir(config: TrainConfig) -> ResumePlan | None:
    """Refuse to clobber an earlier run; return what to resume from, if resuming."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} is a file", "pass a folder path to --output_dir")
    if config.resume:
        return plan_resume(config)
    if config.overwrite:
        return None
    if has_finished_adapter(out):
        raise UsageError(f"output_dir {out} already holds a finished adapter (final/)",
                         "pass --overwrite to replace it, --resume to continue, or choose another --output_dir")
    found = checkpoints(out)
    complete = [path for _, path, ok in found if ok]
    if complete:
        raise UsageError(f"output_dir {out} holds an unfinished run ({len(complete)} checkpoint"
                         f"{'s' if len(complete) > 1 else ''}, newest {complete[-1].name}, no final/)",
                         "pass --resume to continue it, --overwrite to start afresh, or choose another --output_dir")
    if found:
        raise UsageError(f"output_dir {out} holds a half-written {found[-1][1].name} of an earlier run",
                         "pass --overwrite to start afresh, or choose another --output_dir")
    logged = logged_steps(out / METRICS_FILE)
    if logged:
        raise UsageError(f"output_dir {out} holds {METRICS_FILE} of an earlier run that logged {logged} step"
                         f"{'s' if logged > 1 else ''} and stopped before its first checkpoint",
                         "pass --overwrite to replace it, or choose another --output_dir")
    return None


def logged_steps(path: Path) -> int:
    """How many log records an earlier run wrote (0 when the file is missing or empty)."""
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return 0


def check_sharding(fsdp: bool, cuda: bool) -> None:
    """accelerate turns FSDP on for GPU backends only: on CPU an FSDP config would quietly run as DDP."""
    if fsdp and not cuda:
        raise UsageError("an FSDP accelerate config needs GPUs: on CPU accelerate would run it as plain DDP, "
                         "every process holding the whole model",
                         "on CPU launch with configs/accelerate/cpu-2proc.yaml (or torchrun)")


def check_optimizer(config: TrainConfig, cuda: bool) -> None:
    """Refuse an optimizer this machine cannot run before anything is loaded."""
    if config.optim == "paged_adamw_8bit" and not cuda:
        raise UsageError("--optim paged_adamw_8bit pages its states through CUDA unified memory and needs a GPU",
                         "on CPU use --optim adamw_8bit (the same 8-bit states, not paged)")
    if config.optim.endswith("_8bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise UsageError(f"--optim {config.optim} needs bitsandbytes, which is not installed",
                             "pip install 'loratk[quantization]'") from exc


def check_model_limits(config: TrainConfig, model_config) -> list[str]:
    """Refuse a sequence length or rank the model cannot take; return warnings for what it takes badly.

    Works on a weightless copy of the model, so it costs well under a second, before any weights load.
    """
    import torch

    from loratk.engine.models.meta_model import linear_groups, meta_model_from_config, targeted_names
    from loratk.engine.models.targets import resolve_target_modules

    model = meta_model_from_config(copy.deepcopy(model_config), config.trust_remote_code)
    warnings = []
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and config.max_seq_length > limit:
        embeddings = model.get_input_embeddings()
        learned = any(isinstance(m, torch.nn.Embedding) and m is not embeddings and m.num_embeddings == limit
                      for m in model.modules())
        if learned:
            raise UsageError(f"max_seq_length {config.max_seq_length} is beyond the {limit} positions this "
                             f"{model_config.model_type} model has (learned position embeddings)",
                             f"pass --max_seq_length {limit} or less")
        warnings.append(f"max_seq_length {config.max_seq_length} is beyond the {limit} positions the model was "
                        f"trained on (max_position_embeddings); longer examples may train and generate badly")
    groups = linear_groups(model)
    names = set(targeted_names(groups, resolve_target_modules(model, config.target_module_list())))
    widths = {}
    for group in groups:
        if group.name in names:
            widths[group.name] = min(widths.get(group.name, group.in_features), group.in_features, group.out_features)
    if widths and config.lora_rank > max(widths.values()):
        raise UsageError(f"lora_rank {config.lora_rank} is larger than any targeted layer can use: a LoRA update of "
                         f"an in x out layer has rank at most min(in, out), here at most {max(widths.values())}",
                         f"pass --lora_rank {max(widths.values())} or less")
    narrow = sorted(name for name, width in widths.items() if config.lora_rank > width)
    if narrow:
        warnings.append(f"lora_rank {config.lora_rank} exceeds what {', '.join(narrow)} can use (rank at most "
                        f"{min(widths[n] for n in narrow)}); the extra rank there only costs memory")
    return warnings


def tokenizer_bytes(model_path: str | Path) -> int:
    """Bytes of the tokenizer files that every checkpoint and the final adapter copy."""
    folder = Path(model_path)
    return sum((folder / name).stat().st_size for name in TOKENIZER_FILES if (folder / name).is_file())


def total_steps(config: TrainConfig, train_rows: int, processes: int = 1) -> int:
    """Optimizer steps the run will take."""
    if config.max_steps > 0:
        return config.max_steps
    batches = math.ceil(train_rows / (config.per_device_train_batch_size * processes))
    return math.ceil(config.num_train_epochs * math.ceil(batches / config.gradient_accumulation_steps))


def checkpoints_at_peak(config: TrainConfig, train_rows: int, processes: int = 1) -> int:
    """How many checkpoints exist at once at most: those the schedule saves, up to save_total_limit
    plus the one written before the oldest is rotated away."""
    return min(config.save_total_limit + 1, total_steps(config, train_rows, processes) // config.save_steps)


def log_records(config: TrainConfig, train_rows: int, evaluates: bool, processes: int = 1) -> int:
    """How many records the run logs: one per logging step, and one more per evaluation."""
    return (total_steps(config, train_rows, processes) // config.logging_steps) * (2 if evaluates else 1)


def space_needed(trainable_parameters: int, checkpoints: int, tokenizer_size: int, logged: int = 0) -> int:
    """Bytes a run has written at its peak: ``checkpoints`` checkpoints, final/, metrics and curves.
    The ``logged`` records are counted in metrics.jsonl and in every checkpoint's log history (the
    newest holds them all)."""
    adapter = trainable_parameters * ADAPTER_BYTES_PER_PARAMETER + tokenizer_size
    checkpoint = adapter + trainable_parameters * OPTIMIZER_BYTES_PER_PARAMETER + CHECKPOINT_EXTRA_BYTES
    return checkpoints * checkpoint + adapter + RUN_EXTRA_BYTES + (checkpoints + 1) * logged * LOG_RECORD_BYTES


def check_writable(path: Path, needed: int) -> None:
    """Fail now, not hours from now, if output_dir cannot take ``needed`` bytes; create nothing then."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LoratkError(f"cannot write to output_dir {path}: {existing} is not a folder",
                          "choose a writable folder with free space for --output_dir")
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise LoratkError(f"output_dir {path} has {_mb(free)} free; the checkpoints and the adapter need about "
                          f"{_mb(needed)}", "free some space, lower --save_total_limit, or choose another --output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".loratk-write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        _remove_empty_up_to(path, existing)
        raise LoratkError(f"cannot write to output_dir {path}: {exc.strerror or exc}",
                          "choose a writable folder with free space for --output_dir") from exc


def _remove_empty_up_to(path: Path, stop: Path) -> None:
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MB" if size < 10 * 2**20 else f"{size / 2**20:,.0f} MB"
