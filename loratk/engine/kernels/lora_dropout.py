"""LoRA dropout as a short list of dropped units instead of a mask over the whole input.

Dropout in front of ``lora_A`` multiplies an input of tokens x features by a random mask. Drawing
the dropped positions directly (the gaps between them are geometric) takes p x units random
numbers instead of one per unit (5% of them at p = 0.05), and zeroing them in a copy of the
input touches only those units: the copy, which the matmul needs in its own dtype anyway, is the
only pass over the input. Nothing mask-sized exists, and backward draws the same units again from
the seed. Each unit is dropped independently with probability exactly p, as with
``torch.nn.functional.dropout``.

On CUDA the units are a boolean mask drawn from a seeded generator instead: the list's length
depends on the draws, so building it would wait for the GPU (a host sync per layer, forward and
backward), where the mask costs one pass at memory bandwidth.
"""

from __future__ import annotations

import math

import torch


def dropped_units(numel: int, p: float, seed: int, device: torch.device | str = "cpu",
                  as_mask: bool | None = None) -> torch.Tensor:
    """The units dropout removes from ``numel`` units, the same for a seed: sorted flat indices, or
    with ``as_mask`` (the default on CUDA) a boolean mask of ``numel`` units.

    Each unit is dropped independently with probability p: the gap to the next dropped unit is
    geometric, ``floor(log(u) / log(1 - p)) + 1`` for a uniform u.
    """
    device = torch.device(device)
    as_mask = device.type == "cuda" if as_mask is None else as_mask
    if not p or not numel:
        return (torch.zeros(numel, dtype=torch.bool, device=device) if as_mask
                else torch.empty(0, dtype=torch.int64, device=device))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    if as_mask:
        return torch.rand(numel, generator=generator, device=device) < p
    mean = numel * p
    draws = int(mean + 8 * math.sqrt(mean * (1 - p)) + 64)  # enough to pass numel almost always
    log_keep = math.log1p(-p)
    parts, start = [], 0
    while start < numel:
        uniform = torch.rand(draws, generator=generator, device=device)  # 24 bits: gaps exact to 2^-24
        gaps = torch.log1p(uniform.neg_()).div_(log_keep).floor_().to(torch.int64).add_(1)  # 1 - u is in (0, 1]
        positions = torch.cumsum(gaps, 0).add_(start - 1)
        parts.append(positions)
        start = int(positions[-1]) + 1
    indices = parts[0] if len(parts) == 1 else torch.cat(parts)
    return indices[:int(torch.searchsorted(indices, numel))]


def zeroed(x: torch.Tensor, units: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x in ``dtype`` with the flat ``units`` (from ``dropped_units``) set to zero, in a contiguous
    copy when there are units to zero. ``dropout(x) == zeroed(x, units, dtype) / (1 - p)``; callers
    apply the division to an r-wide product instead of the whole input."""
    if units is None:
        return x.to(dtype)
    kept = x.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
    zero_units_(kept, units)
    return kept


def zero_units_(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Set the flat ``units`` (indices or a mask, from ``dropped_units``) of contiguous x to zero, in place."""
    flat = x.view(-1)
    if units.dtype == torch.bool:
        flat.masked_fill_(units, 0)
    else:
        flat.index_fill_(0, units, 0)
    return x
