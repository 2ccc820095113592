"""Per-example attention over packed rows equals running each example alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from loratk.engine.kernels.attention import segment_bounds, use_varlen_attention
from loratk.testing import in_fresh_process, loratk_syncs, syncs_reported


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


def packed_batch(lengths, vocab=300, seed=0):
    """One packed row of random examples with the boundaries the collator gives it."""
    from loratk.engine.data.packing import example_bounds

    generator = torch.Generator().manual_seed(seed)
    examples = [torch.randint(0, vocab, (1, n), generator=generator) for n in lengths]
    positions = [p for e in examples for p in range(e.shape[1])]
    return examples, {"input_ids": torch.cat(examples, dim=1), "position_ids": torch.tensor([positions]),
                      **example_bounds(positions)}


def test_the_collators_boundaries_reach_attention_and_are_read_once_per_batch(tiny_model, monkeypatch):
    """With cu_seq_lens from the collator no layer looks at position_ids: one host read per batch
    (free on CPU; on a GPU one copy per batch where varlen flash attention is missing)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.use_cache = False
    assert use_varlen_attention(model, max_seq_length=64)
    examples, batch = packed_batch((7, 3, 11))
    expected = model(**{k: batch[k] for k in ("input_ids", "position_ids")}).logits
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or original(self))
    logits = model(**batch).logits
    monkeypatch.undo()
    assert model.config.num_hidden_layers > 1 and reads == [torch.Size([4])]  # cu_seq_lens, once
    torch.testing.assert_close(logits, expected)


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    """torch.nn.attention.varlen.varlen_attn's contract (torch 2.11, no enable_gqa), computed per
    example with sdpa: stands in for the CUDA-only kernel so the layout around it is tested on CPU."""
    assert window_size == (-1, 0) and cu_seq_q is cu_seq_k and cu_seq_q.dtype == torch.int32
    assert query.shape[1] == key.shape[1], "without enable_gqa the kernel needs repeated key/value heads"
    bounds = cu_seq_q.tolist()
    assert max_q == max_k == max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    parts = [torch.nn.functional.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (query, key, value)),
                                                              is_causal=True, scale=scale).transpose(0, 1)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts)


def test_one_call_attention_gives_the_kernel_its_layout_and_equals_per_example_attention(monkeypatch):
    from loratk.engine.data.packing import example_bounds
    from loratk.engine.kernels import attention

    monkeypatch.setattr(attention, "_torch_varlen", lambda: (reference_varlen, {"window_size": (-1, 0)}, False))
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 8, 21, 16, generator=generator)
    key, value = torch.randn(2, 1, 2, 21, 16, generator=generator)  # grouped: 4 query heads per key head
    positions = [*range(7), *range(3), *range(11)]
    bounds = example_bounds(positions)
    one = attention.one_call_attention(query, key, value, bounds["cu_seq_lens_q"], bounds["max_length_q"], 0.3)
    loop, _ = attention.varlen_attention(None, query, key, value, None, scaling=0.3,
                                         position_ids=torch.tensor([positions]))
    assert one.shape == loop.shape == (1, 21, 8, 16)
    torch.testing.assert_close(one, loop)


@pytest.mark.cuda
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_cuda_packed_batch_is_one_varlen_call_per_layer_and_equals_separate_runs(architecture, tiny_model_factory):
    from loratk.engine.kernels import attention

    if attention._torch_varlen() is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory(architecture), dtype=torch.bfloat16).cuda()
    model.config.use_cache = False
    examples, batch = packed_batch((37, 5, 120, 64))
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    separate = torch.cat([model(e.cuda()).logits.float() for e in examples], dim=1)
    assert use_varlen_attention(model, max_seq_length=256)
    calls = []
    original = attention.one_call_attention
    attention.one_call_attention = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with syncs_reported() as syncs:
            packed = model(**batch).logits.float()
    finally:
        attention.one_call_attention = original
    assert len(calls) == model.config.num_hidden_layers
    assert not loratk_syncs(syncs), loratk_syncs(syncs)
    torch.testing.assert_close(packed, separate, atol=0.05, rtol=0.02)
