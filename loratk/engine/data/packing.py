"""Padding-free packing: several examples per row, each attending only to itself.

Examples are packed best-fit (longest first, each into the fullest row it still fits) into rows of
at most ``max_seq_length`` tokens. ``position_ids`` restart at 0 at every example and batches
carry no ``attention_mask``: transformers then builds a per-example causal mask from the
restarts (``masking_utils.find_packed_sequence_indices``; only without a mask and without a KV
cache, hence ``use_cache=False``). The first label of each example is masked, so no example is
trained to predict its first token from the one before it.

Where attention runs per example whatever the row (``ONE_ROW_ATTENTION``: loratk's per-example
attention), the rows of a batch are concatenated into one row: nothing is padded at all, and a
batch costs the compute of its real tokens only. The rows still decide which examples form a batch.
Such a batch also carries its examples' boundaries, computed here on the host once per batch under
the names transformers passes on to attention functions (``cu_seq_lens_q``/``_k``: int32 start
offsets plus the total; ``max_length_q``/``_k``: the longest example): on CUDA the attention of a
whole batch is then one variable-length kernel call per layer, with no host sync.
"""

from __future__ import annotations

import inspect
from bisect import bisect_left, insort
from typing import Any, Sequence

from loratk.engine.data.tokenize import IGNORE_INDEX

# Attention implementations that honour the packed per-example mask or cut rows at restarts.
EXACT_ATTENTION = frozenset({"eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3",
                             "loratk_varlen"})
_MASK_BUILDERS = ("create_causal_mask", "create_sliding_window_causal_mask", "create_masks_for_generate")
# Attention implementations whose cost does not grow with the row: a batch's rows may be one row.
# (A masked kernel's cost grows with the square of the row.)
ONE_ROW_ATTENTION = frozenset({"loratk_varlen"})


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length at most ``capacity``."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        slot = bisect_left(free, (size, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
        else:
            row, space = len(rows), capacity
            rows.append([index])
        if space - size > 0:
            insort(free, (space - size, row))
    return rows


def pack_rows(examples, capacity: int):
    """A dataset of packed rows (input_ids, labels, position_ids, length) from tokenized examples."""
    from datasets import Dataset

    lengths = list(examples["length"])
    all_ids, all_labels = list(examples["input_ids"]), list(examples["labels"])
    packed: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for members in best_fit(lengths, capacity):
        ids, labels, positions = [], [], []
        for index in members:
            ids += all_ids[index]
            labels += [IGNORE_INDEX, *all_labels[index][1:]]
            positions += range(lengths[index])
        for key, value in zip(packed, (ids, labels, positions, len(ids))):
            packed[key].append(value)
    return Dataset.from_dict(packed)


def packing_efficiency(lengths: Sequence[int], capacity: int) -> float:
    """Real tokens / token slots when packed into rows of ``capacity``."""
    rows = best_fit(lengths, capacity)
    return sum(lengths) / (len(rows) * capacity) if rows else 0.0


def padded_efficiency(lengths: Sequence[int], batch_size: int) -> float:
    """Real tokens / token slots for padded batches of similar lengths."""
    ordered = sorted(lengths)
    slots = sum(max(ordered[i:i + batch_size]) * len(ordered[i:i + batch_size])
                for i in range(0, len(ordered), batch_size))
    return sum(lengths) / slots if slots else 0.0


def _inner(model):
    """The transformers model under DDP's and peft's wrappers."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def packing_blocker(model) -> str | None:
    """Why packing would not be exact for ``model`` (None: it is exact)."""
    inner = _inner(model)
    return class_packing_blocker(type(inner), getattr(inner.config, "_attn_implementation", None))


def batches_as_one_row(model) -> bool:
    """Whether ``model``'s attention lets a batch's packed rows be concatenated into one."""
    return getattr(_inner(model).config, "_attn_implementation", None) in ONE_ROW_ATTENTION


def class_packing_blocker(model_class: type, attention: str | None) -> str | None:
    """Why packing would not be exact for a model class with this attention implementation."""
    attention = attention or "eager"
    if attention not in EXACT_ATTENTION:
        return f"attention implementation {attention!r} ignores position_ids"
    if "position_ids" not in inspect.signature(model_class.forward).parameters:
        return f"{model_class.__name__} takes no position_ids"
    try:
        source = inspect.getsource(inspect.getmodule(model_class))
    except (OSError, TypeError):
        return f"cannot check how {model_class.__name__} builds its attention mask"
    if not any(builder in source for builder in _MASK_BUILDERS):
        return f"{model_class.__name__} does not build per-example masks from position_ids"
    return None


class PackedCollator:
    """Stack packed rows, padding the shorter ones with a final segment nothing attends to; or,
    with ``one_row``, concatenate them into one row without padding."""

    def __init__(self, pad_token_id: int, one_row: bool = False):
        self.pad_token_id = pad_token_id
        self.one_row = one_row

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.one_row:
            batch = {key: torch.tensor([[value for r in rows for value in r[key]]], dtype=torch.long)
                     for key in ("input_ids", "labels", "position_ids")}
            return {**batch, **example_bounds([value for r in rows for value in r["position_ids"]])}
        longest = max(len(r["input_ids"]) for r in rows)
        input_ids, labels, positions = [], [], []
        for r in rows:
            pad = longest - len(r["input_ids"])
            input_ids.append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(r["labels"]) + [IGNORE_INDEX] * pad)
            positions.append(list(r["position_ids"]) + list(range(pad)))  # padding starts its own segment
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "position_ids": torch.tensor(positions, dtype=torch.long)}


def example_bounds(positions: Sequence[int]) -> dict[str, Any]:
    """transformers' variable-length attention kwargs for one packed row with these position ids."""
    import torch

    starts = [index for index, position in enumerate(positions) if position == 0]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    offsets = [*starts, len(positions)]
    longest = max(end - start for start, end in zip(offsets[:-1], offsets[1:]))
    cu_seq_lens = torch.tensor(offsets, dtype=torch.int32)
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest, "max_length_k": longest}
