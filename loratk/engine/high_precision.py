"""Run a model's forward pass in float64 without holding a float64 copy of the model.

``loratk merge`` checks that the merged model answers like the adapter model. In float32, the
two forward passes round differently ((W + BA)x against Wx + B(Ax) in every layer), and for logits
around 40 that rounding alone reaches 1e-4. In float64 it vanishes, and what is left of the
difference is the merge itself (the rounding of W + BA to the stored dtype). Each unit of the model
(one decoder layer, the embeddings, the final norm, the head) is upcast just before it runs and
cast back right after, so only one unit at a time takes float64 memory, and every value round-trips
exactly (float64 holds every float32, bfloat16 and float16 value).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def execution_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (children of the largest ModuleList) and every other module that owns
    parameters or buffers outside them: each is upcast as a whole, so that a LoRA layer's adapters
    are float64 before the layer casts its input to their dtype."""
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    stack = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)
    layers = list(stack) if stack is not None else []
    inside = {id(sub) for layer in layers for sub in layer.modules()}
    others = [m for m in model.modules() if id(m) not in inside and m is not stack
              and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))]
    return layers + others


def _cast(unit: torch.nn.Module, saved: dict[int, torch.dtype] | None) -> dict[int, torch.dtype]:
    """Upcast the unit's floating tensors in place (``saved`` None) or restore their dtypes."""
    original: dict[int, torch.dtype] = {}
    for tensor in [*unit.parameters(), *unit.buffers()]:
        if not tensor.is_floating_point():
            continue
        if saved is None:
            original[id(tensor)] = tensor.dtype
            tensor.data = tensor.data.to(torch.float64)
        elif id(tensor) in saved:
            tensor.data = tensor.data.to(saved[id(tensor)])
    return original


@contextlib.contextmanager
def float64_execution(model: torch.nn.Module) -> Iterator[None]:
    """Inside this context the model computes in float64, one unit at a time."""
    handles = []
    for unit in execution_units(model):
        state: dict[str, dict[int, torch.dtype]] = {}

        def upcast(module, args, state=state):
            state["dtypes"] = _cast(module, None)

        def restore(module, args, output, state=state):
            _cast(module, state.pop("dtypes", {}))

        handles.append(unit.register_forward_pre_hook(upcast))
        handles.append(unit.register_forward_hook(restore))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
