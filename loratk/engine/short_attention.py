"""Causal attention for one short example, built from batched matmuls, for CPUs.

torch's CPU flash-attention kernel runs at about a tenth of the machine's matmul peak on the
short examples instruction data is made of (measured: ``benchmarks/attention_kernels.py``).
This computes the whole (length x length) score matrix with ``bmm`` instead, which runs near the
peak, and pays for the upper triangle it does not need. Nothing quadratic is kept for backward:
only the scaled query, the key and the value, which is less than the flash kernel keeps (it also
keeps the output and the log-sum-exp). Backward recomputes the probabilities.

The scores are rounded to the input dtype before the softmax, as in transformers' eager attention;
the softmax itself runs in float32. Above ``MAX_LENGTH`` tokens the quadratic buffers outgrow the
caches and the flash kernel is faster again, so callers send longer examples there. In float32
the flash kernel is faster at every length (same benchmark), so this is for bfloat16 only.
"""

from __future__ import annotations

import torch

# Past the crossover with the flash kernel in bf16 on a 2-core AVX512-BF16 CPU (1.3x faster at
# 1024 tokens, 0.5x at 1536); it also bounds the transient score buffers: heads x 1024 x 1024
# elements, a few at a time.
MAX_LENGTH = 1024

_future_masks: dict[torch.device, torch.Tensor] = {}


def _future(length: int, device: torch.device) -> torch.Tensor:
    """(length, length) mask of the positions a token may not attend to, a view of a cached one."""
    mask = _future_masks.get(device)
    if mask is None or mask.shape[0] < length:
        size = max(64, 1 << (length - 1).bit_length())
        mask = _future_masks[device] = torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)
    return mask[:length, :length]


def _probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(query @ key^T) with the causal mask; query (KV, groups x L, D), key (KV, L, D)."""
    kv_heads, length, _ = key.shape
    scores = torch.bmm(query, key.transpose(1, 2))
    scores.view(kv_heads, -1, length, length).masked_fill_(_future(length, key.device), float("-inf"))
    return torch.softmax(scores, -1)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, scale):
        kv_heads, length, dim = key.shape
        with torch.autocast(query.device.type, enabled=False):
            # the query heads that share one key/value head are stacked into one matrix, so each
            # product is one batched matmul per key/value head and no key or value is repeated
            grouped = (query * scale).reshape(kv_heads, -1, dim)
            out = torch.bmm(_probabilities(grouped, key), value)
        ctx.save_for_backward(grouped, key, value)
        ctx.scale = scale
        return out.view(query.shape)

    @staticmethod
    def backward(ctx, grad_out):
        grouped, key, value = ctx.saved_tensors
        grad_out = grad_out.reshape(grouped.shape)
        probs = _probabilities(grouped, key)
        grad_value = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_scores = torch._softmax_backward_data(torch.bmm(grad_out, value.transpose(1, 2)), probs, -1, probs.dtype)
        del probs
        grad_query = torch.bmm(grad_scores, key).mul_(ctx.scale)
        grad_key = torch.bmm(grad_scores.transpose(1, 2), grouped)
        heads = grouped.shape[1] // key.shape[1] * key.shape[0]
        return grad_query.view(heads, key.shape[1], key.shape[2]), grad_key, grad_value, None


def applies(query: torch.Tensor) -> bool:
    """Whether this kernel is the faster one for an example's query (H, L, D)."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16 and query.shape[-2] <= MAX_LENGTH


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one example: query (H, L, D), key and value (KV, L, D) -> (H, L, D)."""
    if query.shape[0] % key.shape[0]:
        raise ValueError(f"{query.shape[0]} query heads cannot share {key.shape[0]} key/value heads evenly")
    return _CausalAttention.apply(query, key, value, scale)
