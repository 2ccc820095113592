"""The blocked batched-matmul attention kernel equals causal softmax attention and keeps nothing quadratic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loratk.engine.kernels import matmul_attention
from loratk.engine.memory.measure import kept_for_backward
from loratk.engine.kernels.matmul_attention import applies, blocks, causal_attention


def inputs(heads, kv_heads, length, dtype=torch.float32, dim=16, sharpness=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, length, dim, generator=generator) for n in (heads, kv_heads, kv_heads))
    return [t.to(dtype).requires_grad_() for t in (q * sharpness, k * sharpness, v)]


def gradient(*shape):
    """A fixed output gradient: the tests must not depend on the global generator's state."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def rms_error(got, expected):
    return (got.float() - expected).square().mean().sqrt()


def outputs_and_grads(fn, q, k, v, grad):
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))]


def reference(q, k, v):
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                          enable_gqa=q.shape[0] != k.shape[0])[0]


def eager(q, k, v):
    """transformers' eager attention: scores in the input dtype, float32 softmax."""
    groups = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    length = q.shape[1]
    scores = q @ k.transpose(1, 2) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v


def mine(q, k, v):
    return causal_attention(q, k, v, q.shape[-1] ** -0.5)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 positions, so that short inputs span several."""
    monkeypatch.setattr(matmul_attention, "BLOCK_BYTES", 1)
    monkeypatch.setattr(matmul_attention, "MIN_BLOCK_POSITIONS", 8)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (3, 1)])
@pytest.mark.parametrize("length", [1, 5, 37])
@pytest.mark.parametrize("blocked", [False, True])
def test_equals_sdpa_in_float32(heads, kv_heads, length, blocked, request):
    if blocked:
        request.getfixturevalue("small_blocks")
        assert len(blocks(length, heads, 4)) == -(-length // 8)
    q, k, v = inputs(heads, kv_heads, length)
    grad = gradient(heads, length, q.shape[-1])
    for got, expected in zip(outputs_and_grads(mine, q, k, v, grad), outputs_and_grads(reference, q, k, v, grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (2, 2)])
@pytest.mark.parametrize("blocked", [False, True])
def test_noncontiguous_inputs_as_transformers_passes_them(heads, kv_heads, blocked, request):
    """transformers hands over (heads, tokens, dim) views of (tokens, heads, dim) storage."""
    if blocked:
        request.getfixturevalue("small_blocks")
    q, k, v = (t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
               for t in inputs(heads, kv_heads, 21))
    before = q.detach().clone()
    assert not q.is_contiguous()
    grad = gradient(21, heads, q.shape[-1]).transpose(0, 1)  # a non-contiguous gradient too
    got = outputs_and_grads(mine, q, k, v, grad)
    assert torch.equal(q.detach(), before)  # the query is scaled in a copy
    for got, expected in zip(got, outputs_and_grads(reference, q, k, v, grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [200, 700])
def test_bfloat16_is_as_accurate_as_transformers_eager_attention(length):
    q, k, v = inputs(6, 2, length)
    assert (len(blocks(length, 6, 2)) > 1) == (length == 700)
    grad = gradient(6, length, q.shape[-1])
    exact = outputs_and_grads(reference, q, k, v, grad)
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    for got, eager_got, expected in zip(outputs_and_grads(mine, *low, grad), outputs_and_grads(eager, *low, grad),
                                        exact):
        assert got.dtype == torch.bfloat16
        # root-mean-square error: the largest single error swings by 30% with the random inputs
        error, eager_error = rms_error(got, expected), rms_error(eager_got, expected)
        assert error <= 1.1 * eager_error
        assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_runs_under_autocast_with_the_inputs_dtype():
    q, k, v = (t.detach().bfloat16().requires_grad_() for t in inputs(4, 2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mine(q, k, v)
    out.float().sum().backward()
    assert out.dtype == q.grad.dtype == k.grad.dtype == torch.bfloat16


def test_keeps_only_the_scaled_query_key_and_value_for_backward():
    q, k, v = inputs(6, 2, 300, dtype=torch.bfloat16)
    assert kept_for_backward(lambda: mine(q, k, v)) == (q.numel() + k.numel() + v.numel()) * 2
    assert kept_for_backward(lambda: reference(q, k, v)) > (q.numel() + k.numel() + v.numel()) * 2


def test_applies_to_bfloat16_on_cpu_only():
    query = torch.zeros(4, 100, 8, dtype=torch.bfloat16)
    assert applies(query)
    assert not applies(query.float())  # the flash kernel is as fast or faster in float32


def test_blocks_cover_the_example_and_fit_the_budget():
    assert blocks(100, 9, 2) == [(0, 100)]
    spans = blocks(1000, 9, 2)
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all((end - start) * 9 * 1000 * 2 <= matmul_attention.BLOCK_BYTES for start, end in spans)
    assert blocks(100_000, 9, 2)[0] == (0, matmul_attention.MIN_BLOCK_POSITIONS)


def test_uneven_head_groups_are_refused():
    q, k, v = inputs(5, 2, 3)
    with pytest.raises(ValueError, match="5 query heads cannot share 2"):
        mine(q, k, v)
