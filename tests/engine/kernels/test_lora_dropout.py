"""Dropped units drawn as a list: each unit dropped independently with probability p."""

from __future__ import annotations

import pytest
import torch

from loratk.engine.kernels.lora_dropout import dropped_units, zeroed


def test_the_units_repeat_for_a_seed_and_are_sorted_and_in_range():
    first, again, other = (dropped_units(100_003, 0.05, seed) for seed in (7, 7, 8))
    assert first.dtype == torch.int64
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.all(first[1:] > first[:-1])  # sorted, no unit twice
    assert 0 <= int(first[0]) and int(first[-1]) < 100_003


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_the_dropped_fraction_is_p(p):
    numel = 1_000_000
    fraction = dropped_units(numel, p, 1).numel() / numel
    assert fraction == pytest.approx(p, abs=6 * (p * (1 - p) / numel) ** 0.5)


def test_units_are_dropped_independently():
    p, numel = 0.2, 400_000
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[dropped_units(numel, p, 3)] = True
    both = (mask[1:] & mask[:-1]).float().mean().item()  # neighbours, as a geometric gap could skew them
    two_apart = (mask[2:] & mask[:-2]).float().mean().item()
    assert both == pytest.approx(p * p, abs=2e-3) and two_apart == pytest.approx(p * p, abs=2e-3)
    # the first unit is dropped with probability p too (the first gap starts before it)
    first = sum(int(dropped_units(5, p, seed)[:1].eq(0).sum()) for seed in range(4000)) / 4000
    assert first == pytest.approx(p, abs=0.03)


def test_nothing_is_dropped_for_p_zero_or_no_units():
    assert dropped_units(1000, 0.0, 1).numel() == 0
    assert dropped_units(0, 0.5, 1).numel() == 0
    assert torch.all(dropped_units(3, 0.5, 2) < 3)


def test_zeroed_sets_exactly_the_dropped_units_to_zero_in_a_copy():
    x = torch.arange(1, 61, dtype=torch.float32).view(6, 10).T  # not contiguous
    units = dropped_units(x.numel(), 0.25, 11)
    kept = zeroed(x, units, torch.bfloat16)
    assert kept.dtype == torch.bfloat16 and kept.is_contiguous()
    expected = x.contiguous().view(-1).clone()
    expected[units] = 0
    assert torch.equal(kept.view(-1).float(), expected)
    assert torch.all(x > 0)  # the input is untouched
    assert zeroed(x, None, torch.float32) is x  # nothing dropped: no copy


def test_the_mask_form_repeats_for_a_seed_and_drops_a_fraction_p():
    """CUDA's form: a boolean mask, drawn without learning how many units it drops (no host sync)."""
    first, again, other = (dropped_units(200_000, 0.1, seed, as_mask=True) for seed in (7, 7, 8))
    assert first.dtype == torch.bool and first.shape == (200_000,)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.float().mean().item() == pytest.approx(0.1, abs=6 * (0.1 * 0.9 / 200_000) ** 0.5)
    assert not dropped_units(50, 0.0, 1, as_mask=True).any()
    x = torch.randn(40, 5000)
    kept = zeroed(x, first, torch.float32)
    assert torch.equal(kept.view(-1)[first], torch.zeros(int(first.sum())))
    assert torch.equal(kept.view(-1)[~first], x.view(-1)[~first])
