"""Measured peaks of tensor memory, to hold ``estimate-memory`` against real runs.

CUDA: the caching allocator's own count. CPU: the PyTorch profiler's allocation and free events,
summed in time order. Two things make the CPU count of a training run subtle, and
``measure_training_peak`` handles both by measuring from the moment the model is loaded, with the
model's own tensors as the starting point:

- the profiler sees the allocations of the threads it follows only, and transformers converts
  checkpoint weights in a thread pool;
- safetensors maps the whole checkpoint file into one storage, which the profiler reports as one
  allocation of the file's size: file-backed pages, and never what the estimate counts. Weights
  that need no conversion stay views into it.
"""

from __future__ import annotations

import resource
import sys
from typing import Any, Callable


def peak_memory_mb() -> dict[str, float]:
    """This process's peak resident memory, and the CUDA allocator's peaks where there is a GPU (MB)."""
    import torch

    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        peak["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return peak


def measure_peak_bytes(run: Callable[[], Any]) -> int:
    """Peak bytes of tensor storage allocated while ``run()`` executes, above what was allocated before."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - start
    profiler = _CpuAllocations()
    profiler.start()
    try:
        run()
    finally:
        profiler.stop()
    return profiler.peak()


class _CpuAllocations:
    """The profiler's running sum of CPU allocations and frees."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    def start(self) -> None:
        self._profile.__enter__()

    def stop(self) -> None:
        self._profile.__exit__(None, None, None)

    def peak(self) -> int:
        events = sorted((e.start_ns(), e.nbytes()) for e in self._profile.profiler.kineto_results.events()
                        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
        current = peak = 0
        for _, size in events:
            current += size
            peak = max(peak, current)
        return peak


def model_tensor_bytes(model) -> dict[int, int]:
    """``{data pointer: bytes}`` of the model's parameters and buffers, and of the quantization
    state (absmax, row scales) that bitsandbytes keeps beside its packed weights. A view counts its
    own bytes, not those of the storage it lives in."""
    import torch

    found: dict[int, int] = {}

    def add(tensor) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            found[tensor.data_ptr()] = tensor.numel() * tensor.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:  # 4-bit: absmax and its nested (double) quantization
            add(getattr(state, "absmax", None))
            add(getattr(state, "offset", None))
            state = getattr(state, "state2", None)
        add(getattr(tensor, "SCB", None))  # 8-bit row scales
    return found


def measure_training_peak(train_run: Callable[[Callable[[Any], None]], Any]) -> int:
    """Peak tensor bytes of a training run, counted from the moment its model is loaded.

    ``train_run(after_load)`` runs the training and calls ``after_load(model)`` once the model is
    loaded (``loratk.engine.training.run.train`` takes it as a keyword). The peak is the model's
    tensors then, plus the peak of what is allocated (and not freed) after; model tensors that are
    replaced later (an upcast, say) are freed before anything else is allocated and stop counting.
    """
    import torch

    state: dict[str, Any] = {}

    def after_load(model) -> None:
        state["model"], state["tensors"] = model, model_tensor_bytes(model)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            state["profiler"] = profiler = _CpuAllocations()
            profiler.start()

    try:
        train_run(after_load)
    finally:
        if "profiler" in state:
            state["profiler"].stop()
    if "tensors" not in state:
        raise RuntimeError("the training run never called after_load(model)")
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    kept = set(model_tensor_bytes(state["model"]))
    loaded = sum(size for pointer, size in state["tensors"].items() if pointer in kept)
    return loaded + state["profiler"].peak()


def kept_for_backward(run: Callable[[], Any], leave_out=()) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``run()`` builds its graph.

    Storages of the tensors in ``leave_out`` (usually a model's parameters) are not counted.
    """
    import torch

    left_out = {t.untyped_storage().data_ptr() for t in leave_out}
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(size for pointer, size in kept.items() if pointer not in left_out)
