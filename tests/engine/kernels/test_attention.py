"""Per-example attention over packed rows equals running each example alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from loratk.engine.kernels.attention import segment_bounds, use_varlen_attention
from loratk.testing import in_fresh_process


def test_segment_bounds():
    assert segment_bounds(torch.tensor([0, 1, 2, 0, 1, 0])) == [0, 3, 5, 6]
    assert segment_bounds(torch.tensor([3, 4, 0, 1])) == [0, 2, 4]  # a row cut mid-example


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_packed_logits_and_gradients_equal_separate_runs(architecture, tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory(architecture))
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, 300, (1, n), generator=generator) for n in (7, 3, 11)]
    separate = [model(e).logits for e in examples]
    separate_loss = sum(out.float().square().mean() for out in separate)
    separate_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    assert use_varlen_attention(model, max_seq_length=64)
    packed = torch.cat(examples, dim=1)
    positions = torch.cat([torch.arange(e.shape[1]) for e in examples])[None]
    logits = model(packed, position_ids=positions).logits
    pieces = torch.split(logits, [e.shape[1] for e in examples], dim=1)
    for alone, piece in zip(separate, pieces):
        torch.testing.assert_close(piece, alone, atol=1e-5, rtol=1e-5)
    sum(piece.float().square().mean() for piece in pieces).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-4)


def test_unsupported_architectures_keep_their_attention(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("gpt2"))
    before = model.config._attn_implementation
    assert not use_varlen_attention(model, max_seq_length=64)
    assert model.config._attn_implementation == before


def test_a_sliding_window_shorter_than_the_rows_is_not_exact(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("mistral"))
    model.config.sliding_window = 16
    assert not use_varlen_attention(model, max_seq_length=64)


def test_bfloat16_packed_rows_match_eager_attention_on_each_example(tiny_model_factory):
    """In bf16 on CPU examples go to loratk's batched-matmul kernel: as exact as eager attention."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama"), dtype=torch.bfloat16,
                                                 attn_implementation="eager")
    model.config.use_cache = False
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, 300, (1, n), generator=generator) for n in (9, 4, 20)]
    separate = [model(e).logits.float() for e in examples]
    assert use_varlen_attention(model, max_seq_length=64)
    positions = torch.cat([torch.arange(e.shape[1]) for e in examples])[None]
    packed = model(torch.cat(examples, dim=1), position_ids=positions).logits.float()
    for alone, piece in zip(separate, torch.split(packed, [e.shape[1] for e in examples], dim=1)):
        torch.testing.assert_close(piece, alone, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_does_not_grow_with_the_square_of_the_row(dtype):
    """Both kernels are memory-efficient: twice the tokens, at most about twice the peak."""
    # Measured in fresh interpreters: what ran before in this process must not change the count.
    short, long = (in_fresh_process(attention_peak, length, dtype) for length in (1500, 3000))
    assert long < 2.5 * short  # a heads x seq x seq buffer would make it about 4x


def attention_peak(length: int, dtype) -> int:
    """Peak bytes allocated by forward and backward of one example's attention."""
    from loratk.engine.kernels.attention import varlen_attention
    from loratk.engine.memory.measure import measure_peak_bytes

    heads, dim = 8, 16
    query = torch.randn(1, heads, length, dim, dtype=dtype, requires_grad=True)
    key = torch.randn(1, heads // 2, length, dim, dtype=dtype, requires_grad=True)
    value = torch.randn(1, heads // 2, length, dim, dtype=dtype, requires_grad=True)
    positions = torch.arange(length)[None]  # one long example: the worst case
    return measure_peak_bytes(
        lambda: varlen_attention(None, query, key, value, None, position_ids=positions)[0].sum().backward())
