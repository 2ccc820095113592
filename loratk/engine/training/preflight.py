"""Checks made before any training work: the output folder, resumability, space to write."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loratk.config.train_config import TrainConfig
from loratk.engine.training.checkpoints import latest_checkpoint
from loratk.engine.training.outputs import has_finished_adapter
from loratk.errors import LoratkError, UsageError

# Bytes written per trainable parameter by one checkpoint: fp32 weights plus AdamW's two moments.
CHECKPOINT_BYTES_PER_PARAMETER = 12
SPACE_MARGIN_BYTES = 64 * 2**20


def check_output_dir(config: TrainConfig) -> Path | None:
    """Refuse to clobber a finished run; return the checkpoint to resume from, if resuming."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} is a file", "pass a folder path to --output_dir")
    if has_finished_adapter(out) and not (config.overwrite or config.resume):
        raise UsageError(f"output_dir {out} already holds a finished adapter (final/)",
                         "pass --overwrite to replace it, --resume to continue, or choose another --output_dir")
    if config.resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise UsageError(f"--resume: no complete checkpoint-N folder in {out}",
                             "run without --resume to start afresh")
        return checkpoint
    return None


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


def check_writable(path: Path, trainable_parameters: int, checkpoints_kept: int) -> None:
    """Fail now, not hours from now, if output_dir cannot take the checkpoints and the adapter."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".loratk-write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise LoratkError(f"cannot write to output_dir {path}: {exc.strerror or exc}",
                          "choose a writable folder with free space for --output_dir") from exc
    needed = trainable_parameters * CHECKPOINT_BYTES_PER_PARAMETER * (checkpoints_kept + 2) + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(path).free
    if free < needed:
        raise LoratkError(f"output_dir {path} has {free / 2**20:,.0f} MB free; checkpoints and the adapter "
                          f"need about {needed / 2**20:,.0f} MB",
                          "free some space, lower --save_total_limit, or choose another --output_dir")
