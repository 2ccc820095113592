"""Whether to recompute activations (gradient checkpointing): an explicit policy, not a guess.

Checkpointing costs about a third more compute, so it stays off unless the memory estimate of the
run without it (loratk estimate-memory's model) does not fit in the memory this device has free.
``--gradient_checkpointing`` / ``--no-gradient_checkpointing`` override the policy.
"""

from __future__ import annotations

import dataclasses

from loratk.config.train_config import TrainConfig

HEADROOM = 0.9  # leave a tenth for the allocator, the data and everything else


def available_memory_bytes() -> int | None:
    """Free memory of the device training runs on (CUDA: the GPU; CPU: MemAvailable)."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_gradient_checkpointing(model, config: TrainConfig, available: int | None = None) -> tuple[bool, str]:
    """(on or off, why) for a run of ``model`` (before LoRA is attached) with ``config``."""
    import torch

    from loratk.engine.memory.estimate import estimate, model_shape
    from loratk.engine.memory.report import default_attention, settings_for

    if config.gradient_checkpointing is not None:
        flag = "--gradient_checkpointing" if config.gradient_checkpointing else "--no-gradient_checkpointing"
        return config.gradient_checkpointing, f"set by {flag}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain = dataclasses.replace(config, gradient_checkpointing=False)
    settings = settings_for(model, plain, device, attn_implementation=default_attention(model, plain))
    needed = estimate(model_shape(model), settings).total_bytes
    available = available_memory_bytes() if available is None else available
    if available is None:
        return False, "off: free memory unknown"
    verdict = "fits" if needed <= HEADROOM * available else "does not fit"
    detail = f"estimated peak {needed / 2**20:,.0f} MB without it {verdict} in {available / 2**20:,.0f} MB free"
    return verdict != "fits", ("on: " if verdict != "fits" else "off: ") + detail
