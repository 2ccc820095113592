"""What the benchmarks in this folder share: one line naming the machine they ran on, and running
one configuration in a worker process of its own.

CPUs sold under one name differ: two "AMD EPYC" virtual machines of this project measured bf16
matmul peaks of 878 and 418 GFLOP/s at about the same fp32 peak (the second is family 25 model
17, a Zen 4, which runs 512-bit instructions in two halves), so the line carries the x86 family
and model numbers and the vector extensions torch uses.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys


def cpu_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's fields from the text of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_name(fields: dict[str, str]) -> str:
    """E.g. 'AMD EPYC (family 25 model 17)'; the platform's processor name without /proc/cpuinfo."""
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def describe() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            fields = cpu_fields(handle.read())
    except OSError:
        fields = {}
    flags = fields.get("flags", "").split()
    bf16 = ", native bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else ""
    return (f"{cpu_name(fields)}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{torch.backends.cpu.get_cpu_capability()}{bf16}, torch {torch.__version__}")


def run_worker(script: str, name: str, args: list[str]) -> dict | None:
    """Run ``script --worker NAME ARGS`` in a fresh interpreter (its memory peak is its own) and
    return the JSON it prints on a ``RESULT `` line; None, with its error output shown, if it failed."""
    proc = subprocess.run([sys.executable, script, "--worker", name, *args], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[len("RESULT "):])
