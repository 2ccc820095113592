"""Causal attention of one example from batched matmuls, in blocks of query rows, for CPUs.

torch's CPU flash-attention kernel reaches 1-17% of this machine's bf16 matmul peak on one
example's attention (``benchmarks/attention_kernels.py``). This kernel builds the attention out of
``bmm`` calls, which run near the peak, a block of query rows at a time:

- each block's scores, probabilities and their gradients stay within about ``BLOCK_BYTES`` (the
  size of a core's L2 cache here), so the softmax and its backward read them from cache;
- a block of positions [start, end) multiplies only with keys [0, end): causality skips the upper
  blocks, and only the diagonal block is masked;
- the softmax sees a whole row at once (no running maximum is needed), in float32, and backward
  recomputes the probabilities: only the scaled query, the key and the value are kept, less than
  the flash kernel keeps (it also keeps the output and the log-sum-exp).

The query heads that share a key/value head are stacked position-major into one matrix, so each
product is one batched matmul per key/value head and no key or value is repeated. Scores are
rounded to the input dtype before the softmax, as in transformers' eager attention. Measured in
bf16 (2-core AVX512-BF16 CPU): 1.3-2.9x the flash kernel from 32 to 4096 tokens (2.2-2.9x from
64 to 512, 1.6x from 1536 up), 1.3x at 8192. In float32 the flash kernel is as fast or faster, so this runs in bfloat16 only.
"""

from __future__ import annotations

import torch

BLOCK_BYTES = 1 << 20  # scores of one block of rows; the best of 256 KiB-2 MiB on the benchmark
MIN_BLOCK_POSITIONS = 32  # fewer makes the matmuls too thin

_future_biases: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def applies(query: torch.Tensor) -> bool:
    """Whether this kernel is the faster one for an example's query (H, L, D)."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one example: query (H, L, D), key and value (KV, L, D) -> (H, L, D)."""
    if query.shape[0] % key.shape[0]:
        raise ValueError(f"{query.shape[0]} query heads cannot share {key.shape[0]} key/value heads evenly")
    return _CausalAttention.apply(query, key, value, scale)


def blocks(length: int, heads: int, itemsize: int) -> list[tuple[int, int]]:
    """[start, end) position ranges whose scores (heads x positions x at most length) fit BLOCK_BYTES."""
    step = max(MIN_BLOCK_POSITIONS, BLOCK_BYTES // (heads * length * itemsize))
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _future_bias(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size): 0 where a position may attend, -inf above the diagonal; a view of a cached one."""
    bias = _future_biases.get((dtype, device))
    if bias is None or bias.shape[0] < size:
        side = max(64, 1 << (size - 1).bit_length())
        future = torch.ones(side, side, dtype=torch.bool, device=device).triu_(1)
        bias = _future_biases[(dtype, device)] = torch.zeros(side, side, dtype=dtype, device=device).masked_fill_(
            future, float("-inf"))
    return bias[:size, :size]


def _probabilities(rows: torch.Tensor, key: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Causal softmax of one block's scores: rows (KV, (end - start) x groups, D) position-major."""
    kv_heads = key.shape[0]
    scores = torch.bmm(rows, key[:, :end].transpose(1, 2))
    diagonal = scores.view(kv_heads, end - start, -1, end)[..., start:end]
    diagonal.add_(_future_bias(end - start, scores.dtype, scores.device)[:, None, :])
    return torch.softmax(scores, -1)


def _position_major(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(H, L, D) -> (KV, L x groups, D), row ``position x groups + head in group``."""
    heads, length, dim = x.shape
    return x.reshape(kv_heads, heads // kv_heads, length, dim).transpose(1, 2).reshape(kv_heads, -1, dim)


def _head_major(x: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of ``_position_major``."""
    kv_heads, rows, dim = x.shape
    groups = heads // kv_heads
    return x.view(kv_heads, rows // groups, groups, dim).transpose(1, 2).reshape(heads, -1, dim)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale):
        heads, length, _ = query.shape
        groups = heads // key.shape[0]
        with torch.autocast(query.device.type, enabled=False):
            rows = _position_major(query, key.shape[0])
            # scaled in place when the reordering made a copy (grouped heads), else in a new tensor
            copied = rows.untyped_storage().data_ptr() != query.untyped_storage().data_ptr()
            rows = rows.mul_(scale) if copied else rows * scale
            parts = [torch.bmm(_probabilities(rows[:, start * groups:end * groups], key, start, end), value[:, :end])
                     for start, end in blocks(length, heads, rows.element_size())]
        ctx.save_for_backward(rows, key, value)
        ctx.scale = scale
        return _head_major(torch.cat(parts, 1) if len(parts) > 1 else parts[0], heads)

    @staticmethod
    def backward(ctx, grad_out):
        rows, key, value = ctx.saved_tensors
        heads, length, _ = grad_out.shape
        groups = heads // key.shape[0]
        grad_rows = _position_major(grad_out, key.shape[0])
        spans = blocks(length, heads, rows.element_size())
        if len(spans) == 1:  # one block: no sums over blocks, its products are the gradients
            grad_query, grad_key, grad_value = _block_gradients(rows, grad_rows, key, value, 0, length)
        else:  # summed over blocks, so in float32
            grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
            grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
            grad_query = []
            for start, end in spans:
                block = slice(start * groups, end * groups)
                grad_block, grad_key_part, grad_value_part = _block_gradients(rows[:, block], grad_rows[:, block],
                                                                              key, value, start, end)
                grad_query.append(grad_block)
                grad_key[:, :end] += grad_key_part
                grad_value[:, :end] += grad_value_part
            grad_query = torch.cat(grad_query, 1)
            grad_key, grad_value = grad_key.to(key.dtype), grad_value.to(value.dtype)
        return _head_major(grad_query.mul_(ctx.scale), heads), grad_key, grad_value, None


def _block_gradients(rows, grad_rows, key, value, start: int, end: int):
    """One block's gradients: for its (scaled) query rows, and its shares of the keys' and values'
    before ``end``; the probabilities are recomputed and freed before the last two products."""
    probs = _probabilities(rows, key, start, end)
    grad_value = torch.bmm(probs.transpose(1, 2), grad_rows)
    grad_scores = torch._softmax_backward_data(torch.bmm(grad_rows, value[:, :end].transpose(1, 2)), probs, -1,
                                               probs.dtype)
    del probs
    return torch.bmm(grad_scores, key[:, :end]), torch.bmm(grad_scores.transpose(1, 2), rows), grad_value
