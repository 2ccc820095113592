"""LoRA dropout as a short list of dropped units instead of a mask over the whole input.

Dropout in front of ``lora_A`` multiplies an input of tokens x features by a mask, but ``lora_A``
maps that input to only r columns. With p = 0.05, 95% of the units are kept, so
``dropout(x) @ A.T`` is computed here as ``x @ A.T`` minus what the dropped 5% contribute: a sparse
matrix of the dropped units times ``A.T``. Drawing the dropped positions directly (the gaps
between them are geometric) takes p x units random numbers instead of one per unit, and no pass
over the input is spent on masking. Each unit is dropped independently with probability exactly
p, as with ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import math
import warnings

import torch


def dropped_units(numel: int, p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted flat indices of the units dropout removes from ``numel`` units; the same for a seed.

    Each unit is dropped independently with probability p: the gap to the next dropped unit is
    geometric, ``floor(log(u) / log(1 - p)) + 1`` for a uniform u.
    """
    if not p or not numel:
        return torch.empty(0, dtype=torch.int64, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
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


class DroppedUnits:
    """The units of a (tokens, features) input ``x`` that dropout removes, and products with them.

    With D the matrix that holds x's values at the dropped units and zeros elsewhere,
    ``dropout(x) = (x - D) / (1 - p)``; ``times`` and ``transposed_times`` give the products with
    D and D.T that the forward and the weight gradient subtract, through sparse (CSR) matrices.
    """

    def __init__(self, x: torch.Tensor, p: float, seed: int):
        self.tokens, self.features = x.shape
        self.flat = dropped_units(x.numel(), p, seed, x.device)
        self.token = torch.div(self.flat, self.features, rounding_mode="floor")
        self.feature = self.flat - self.token * self.features
        self.values = x.reshape(-1).index_select(0, self.flat).float()

    def times(self, weight_t: torch.Tensor) -> torch.Tensor:
        """``D @ weight_t`` in float32 (tokens x r)."""
        rows = _csr(self.token, self.feature, self.values, self.tokens, self.features)
        return rows @ weight_t.float()

    def transposed_times(self, grad: torch.Tensor) -> torch.Tensor:
        """``D.T @ grad`` in float32 (features x r)."""
        order = torch.argsort(self.feature, stable=True)
        columns = _csr(self.feature.index_select(0, order), self.token.index_select(0, order),
                       self.values.index_select(0, order), self.features, self.tokens)
        return columns @ grad.float()


def _csr(row: torch.Tensor, column: torch.Tensor, values: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A CSR matrix from entries already sorted by row."""
    starts = torch.searchsorted(row, torch.arange(rows + 1, device=row.device))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(starts, column, values, size=(rows, columns), check_invariants=False)
