"""Attention over packed rows without a mask: each example attends only to itself.

Padding-free packing puts several examples in one row, with ``position_ids`` restarting at 0 at
each example. transformers then builds a block-diagonal mask, and a masked ``scaled_dot_product_attention``
falls back to the kernel that materialises the full attention matrix. loratk instead registers
an attention function that needs no mask:

- on CUDA, one call per layer to torch's variable-length flash attention
  (``torch.nn.attention.varlen``, torch >= 2.10), with the examples' boundaries (``cu_seq_lens_q``,
  ``max_length_q``, the names of transformers' flash-attention kwargs) computed once per batch by
  ``loratk.engine.data.packing.PackedCollator``: no mask, no host sync, no loop over examples;
- elsewhere (CPU, or a torch without it) the row is cut at the example boundaries and each example
  goes to the faster of two kernels: on CPU in bfloat16 loratk's blocked batched-matmul kernel
  (``loratk.engine.kernels.matmul_attention``), elsewhere sdpa's memory-efficient (flash) kernel.
  On CPU this is 4-6x faster than one sdpa call with a block-diagonal mask over the row, and
  FlexAttention has no backward on CPU (torch 2.13): ``benchmarks/packed_attention.py``.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from loratk.engine.kernels import matmul_attention
from loratk.engine.models.attention_support import per_example_attention_blocker

NAME = "loratk_varlen"


def segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the examples in one packed row, plus its length."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [*starts, int(position_ids.shape[-1])]


@functools.cache
def _torch_varlen():
    """torch's variable-length flash attention and its causal keyword, or None before torch 2.10."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    # torch 2.10 spells causality is_causal=True; later releases window_size=(-1, 0)
    causal = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    return varlen_attn, causal, "enable_gqa" in parameters


def one_call_applies(query: torch.Tensor, cu_seq_lens, dropout: float) -> bool:
    """Whether a packed batch's attention runs as one variable-length flash call."""
    return (query.is_cuda and query.shape[0] == 1 and cu_seq_lens is not None and not dropout
            and query.dtype in (torch.float16, torch.bfloat16) and _torch_varlen() is not None)


def one_call_attention(query, key, value, cu_seq_lens: torch.Tensor, max_length: int, scaling=None):
    """Causal attention of every example of one packed row in one kernel call. query (1, H, T, D),
    key/value (1, KV, T, D), ``cu_seq_lens`` the examples' int32 start offsets plus T -> (1, T, H, D)."""
    varlen_attn, causal, takes_gqa = _torch_varlen()
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, heads, D): views, last dim contiguous
    grouped = {}
    if q.shape[1] != k.shape[1]:
        if takes_gqa:
            grouped = {"enable_gqa": True}
        else:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    out = varlen_attn(q, k, v, cu, cu, max_length, max_length, scale=scaling, **causal, **grouped)
    return out[None]


# The last batch's example sizes on the host, by its cu_seq_lens tensor: where the per-example path
# runs on a GPU, one device-to-host copy per batch rather than one per layer.
_sizes_cache: list = [None, None]


def _example_sizes(cu_seq_lens: torch.Tensor) -> list[int]:
    if _sizes_cache[0] is not cu_seq_lens:
        bounds = cu_seq_lens.tolist()
        _sizes_cache[:] = [cu_seq_lens, [end - start for start, end in zip(bounds[:-1], bounds[1:])]]
    return _sizes_cache[1]


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention per packed example. Shapes: query (B, H, T, D), key/value (B, KV, T, D)."""
    if attention_mask is not None and not isinstance(attention_mask, bool):
        raise RuntimeError(f"{NAME} attention cannot honour an attention mask; use packed batches without one")
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if one_call_applies(query, cu_seq_lens, dropout):
        return one_call_attention(query, key, value, cu_seq_lens, kwargs["max_length_q"], scaling), None
    position_ids = kwargs.get("position_ids")
    if position_ids is None and (cu_seq_lens is None or query.shape[0] != 1):
        raise RuntimeError(f"{NAME} attention needs position_ids (packed batches)")
    if position_ids is not None and position_ids.dim() == 1:
        position_ids = position_ids[None]
    grouped = query.shape[1] != key.shape[1]
    rows = query.shape[0]
    parts = []
    # unbind and split, not slicing: their backward joins the pieces' gradients in one pass, where
    # each slice's backward would fill a zero tensor the size of the whole input
    for row, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
        if cu_seq_lens is not None and rows == 1:
            sizes = _example_sizes(cu_seq_lens)
        else:
            bounds = segment_bounds(position_ids[row if position_ids.shape[0] > 1 else 0])
            sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
        for q_part, k_part, v_part in zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1)):
            if not dropout and matmul_attention.applies(q_part):
                attended = matmul_attention.causal_attention(q_part, k_part, v_part,
                                                             scaling or q_part.shape[-1] ** -0.5)
            else:
                # 4-D: 3-D inputs send CPU sdpa to the quadratic math kernel
                attended = F.scaled_dot_product_attention(q_part[None], k_part[None], v_part[None], is_causal=True,
                                                          dropout_p=dropout, scale=scaling, enable_gqa=grouped)[0]
            parts.append(attended.transpose(0, 1))  # (tokens, heads, dim)
    out = torch.cat(parts).view(rows, query.shape[2], query.shape[1], query.shape[3])
    return out, None


def _no_mask(*args, **kwargs):
    return None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def use_varlen_attention(model, max_seq_length: int) -> bool:
    """Switch ``model`` to per-example attention when that is exact for it; report whether it did."""
    if per_example_attention_blocker(model.config, max_seq_length) is not None:
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, ImportError):
        return False
    return True
