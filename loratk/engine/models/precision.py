"""Choosing the training precision: bf16 autocast where the hardware runs it natively."""

from __future__ import annotations

from loratk.errors import UsageError


def cpu_has_native_bf16() -> bool:
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX512", "AMX"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = handle.read()
    except OSError:
        return capability == "AMX"
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_supports_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def choose_precision(bf16: bool | None, fp16: bool) -> str:
    """'bf16', 'fp16' or 'fp32' for a run, from the flags and the device."""
    import torch

    if fp16:
        if not torch.cuda.is_available():
            raise UsageError("--fp16 needs a CUDA GPU", "use --bf16 or leave both out on this machine")
        return "fp16"
    if bf16 is None:
        return "bf16" if device_supports_bf16() else "fp32"
    if bf16 and not torch.cuda.is_available() and not hasattr(torch, "autocast"):
        raise UsageError("--bf16 is not supported on this device", "leave it out to train in fp32")
    return "bf16" if bf16 else "fp32"
