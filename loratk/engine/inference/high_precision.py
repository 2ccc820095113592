"""Run a model's forward pass in float64 without holding a float64 copy of the model.

``loratk merge`` checks that the merged model answers like the adapter model. In float32, the
two forward passes round differently ((W + BA)x against Wx + B(Ax) in every layer), and for logits
around 40 that rounding alone reaches 1e-4. In float64 it vanishes, and what is left of the
difference is the merge itself (the rounding of W + BA to the stored dtype). Each decoder layer
(and any small module outside them, like the final norm) is upcast just before it runs and given
its original storage back right after; the embeddings and the head never are (their outputs are
computed in float64 directly). So at most one layer takes float64 memory, and the model's own
tensors are never copied (float64 holds every float32, bfloat16 and float16 value, so the float64
pass computes on exactly the model's weights).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def execution_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (children of the largest ModuleList) and every other module that owns
    parameters or buffers outside them. A layer is upcast as a whole, so that a LoRA layer's
    adapters are float64 before the layer casts its input to their dtype."""
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    stack = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)
    layers = list(stack) if stack is not None else []
    inside = {id(sub) for layer in layers for sub in layer.modules()}
    wrappers = [m for m in model.modules() if id(m) not in inside and _is_wrapper(m)]
    inside |= {id(sub) for wrapper in wrappers for sub in wrapper.modules()}
    others = [m for m in model.modules() if id(m) not in inside and m is not stack
              and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))]
    return layers + wrappers + others


def _is_wrapper(module: torch.nn.Module) -> bool:
    """A peft wrapper outside the decoder layers (the new-token rows of the embeddings or the head,
    a module trained in full): its forward reads its parts' weights directly, so it runs as a whole."""
    return hasattr(module, "base_layer") and isinstance(getattr(module, "base_layer"), torch.nn.Module)


def _in_own_dtype(module, args):
    """Such a wrapper computes in its weights' dtype (upcasting it could take vocabulary x hidden x 8
    bytes), its output handed on in float64."""
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _upcast(unit: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Point the unit's floating tensors at float64 copies; returns their original data."""
    original: dict[int, torch.Tensor] = {}
    for tensor in [*unit.parameters(), *unit.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in original:
            original[id(tensor)] = tensor.data
            tensor.data = tensor.data.to(torch.float64)
    return original


def _restore(unit: torch.nn.Module, original: dict[int, torch.Tensor]) -> None:
    """Give the tensors their original data back (no new copy; the float64 one is freed)."""
    for tensor in [*unit.parameters(), *unit.buffers()]:
        if id(tensor) in original:
            tensor.data = original[id(tensor)]


ROWS_PER_CHUNK = 4096  # of a large Linear outside the layers (the head): 4096 x hidden in float64 at a time


def _float64_linear(module: torch.nn.Linear):
    """A forward for a Linear (the head, say) that computes in float64 a block of rows at a time,
    without upcasting its weight (vocabulary x hidden x 8 bytes)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        blocks = []
        for start in range(0, module.out_features, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            bias = None if module.bias is None else module.bias[rows].to(torch.float64)
            blocks.append(torch.nn.functional.linear(x, module.weight[rows].to(torch.float64), bias))
        return torch.cat(blocks, dim=-1)
    return forward


def _float64_output(module, args, output):
    return output.to(torch.float64) if output.is_floating_point() else output


@contextlib.contextmanager
def float64_execution(model: torch.nn.Module) -> Iterator[None]:
    """Inside this context the model computes in float64, one unit at a time.

    Embeddings look rows up in their own dtype and hand them on in float64 (exact); a Linear outside
    the decoder layers (the head) computes in float64 by blocks of rows; every other unit is upcast
    while it runs.
    """
    handles, replaced = [], []
    for unit in execution_units(model):
        if _is_wrapper(unit):
            handles += [unit.register_forward_pre_hook(_in_own_dtype), unit.register_forward_hook(_float64_output)]
            continue
        if isinstance(unit, torch.nn.Embedding):
            handles.append(unit.register_forward_hook(_float64_output))
            continue
        if type(unit) is torch.nn.Linear:
            unit.forward = _float64_linear(unit)
            replaced.append(unit)
            continue
        state: dict[str, dict[int, torch.Tensor]] = {}

        def upcast(module, args, state=state):
            state["original"] = _upcast(module)

        def restore(module, args, output, state=state):
            _restore(module, state.pop("original", {}))

        handles.append(unit.register_forward_pre_hook(upcast))
        handles.append(unit.register_forward_hook(restore))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for unit in replaced:
            del unit.forward  # the class's forward again
