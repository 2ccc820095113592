"""Multi-process runs under torchrun / accelerate launch: who am I, and who writes."""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def using_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def ddp_backend() -> str | None:
    """gloo for multi-process CPU runs; None lets PyTorch pick (nccl on GPUs)."""
    import torch

    if world_size() > 1 and not torch.cuda.is_available():
        return "gloo"
    return None


def join_process_group() -> None:
    """Start this process's part of the process group now (as the Trainer would later, with the
    same backend), for collective work before training, e.g. sharing out the reference pass."""
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(backend=ddp_backend())


def device_map_for_quantized() -> dict[str, int] | None:
    """Quantized weights must be placed at load time: on this process's GPU (FSDP places them itself)."""
    import torch

    if not torch.cuda.is_available() or using_fsdp():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}
