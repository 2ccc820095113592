"""Choosing the training precision: bf16 autocast where the hardware runs it natively.

On a CPU without native bf16 (AVX2 only) bf16 matmuls are emulated and about 300x slower than
fp32, so the default is bf16 only where the CPU has AVX512-BF16 or AMX. ``LORATK_CPU_BF16=0`` or
``=1`` overrides the detection (a VM that hides CPU flags, or to try the other path).
"""

from __future__ import annotations

import os

from loratk.errors import UsageError

CPU_BF16_VARIABLE = "LORATK_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    import torch

    forced = os.environ.get(CPU_BF16_VARIABLE, "").strip().lower()
    if forced in ("0", "1", "false", "true", "no", "yes"):
        return forced in ("1", "true", "yes")
    if forced not in ("", "auto"):
        raise UsageError(f"{CPU_BF16_VARIABLE}={forced!r} is not a setting",
                         f"set {CPU_BF16_VARIABLE} to 1, 0 or auto (or unset it)")

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
