"""Attention over packed rows without a mask: each example attends only to itself.

Padding-free packing puts several examples in one row, with ``position_ids`` restarting at 0 at
each example. transformers then builds a block-diagonal mask, and a masked ``scaled_dot_product_attention``
falls back to the kernel that materialises the full attention matrix. loratk instead registers
an attention function that cuts the row at the restarts and runs causal attention on each example
alone: nothing quadratic in the row length is stored, and no mask is built at all. Each example goes
to the faster of two kernels: on CPU in bfloat16 loratk's blocked batched-matmul kernel
(``loratk.engine.kernels.matmul_attention``), elsewhere sdpa's memory-efficient (flash) kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loratk.engine.kernels import matmul_attention

NAME = "loratk_varlen"
# Architectures whose attention is plain causal softmax attention called through transformers'
# attention interface with position_ids passed along (checked by tests/engine/test_attention.py).
SUPPORTED = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "smollm3", "phi3",
                       "starcoder2", "cohere"})


def segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the examples in one packed row, plus its length."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [*starts, int(position_ids.shape[-1])]


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention per packed example. Shapes: query (B, H, T, D), key/value (B, KV, T, D)."""
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise RuntimeError(f"{NAME} attention needs position_ids (packed batches)")
    if attention_mask is not None and not isinstance(attention_mask, bool):
        raise RuntimeError(f"{NAME} attention cannot honour an attention mask; use packed batches without one")
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    grouped = query.shape[1] != key.shape[1]
    rows = query.shape[0]
    parts = []
    # unbind and split, not slicing: their backward joins the pieces' gradients in one pass, where
    # each slice's backward would fill a zero tensor the size of the whole input
    for row, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
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
    config = model.config
    if config.model_type not in SUPPORTED:
        return False
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < max_seq_length:
        return False
    if getattr(config, "attention_dropout", 0.0):
        return False  # dropout in sdpa differs from the eager path; keep the reference behaviour
    register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, ImportError):
        return False
    return True
