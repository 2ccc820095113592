"""Tokens a run adds to the vocabulary: the tokenizer learns them, the embeddings (and an untied
head) grow to hold them, and only their rows train (peft's ``trainable_token_indices``).

The adapter then stores just those rows; the tokenizer saved beside it knows the tokens, and
loading the adapter grows the base's embeddings first (``grow_for_adapter``), as training did.
"""

from __future__ import annotations

from pathlib import Path

from loratk.errors import UsageError


def add_new_tokens(tokenizer, new_tokens: list[str], special_tokens: list[str]) -> list[int]:
    """Add the tokens the tokenizer does not know yet; returns the ids of every listed token."""
    from transformers import AddedToken

    vocabulary = tokenizer.get_vocab()
    known = [token for token in [*new_tokens, *special_tokens] if token in vocabulary]
    if known:
        raise UsageError(f"token {known[0]!r} is already in the tokenizer's vocabulary (id {vocabulary[known[0]]})",
                         "--new_tokens / --add_special_tokens add tokens the tokenizer lacks; drop that one")
    if new_tokens:
        tokenizer.add_tokens([AddedToken(token, normalized=False) for token in new_tokens])
    if special_tokens:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens],
                             special_tokens=True)
    return tokenizer.convert_tokens_to_ids([*new_tokens, *special_tokens])


def grow_embeddings(model, rows: int) -> bool:
    """Give the input embeddings (and the head, tied or not) at least ``rows`` rows; whether they grew.

    Vocabularies are often padded past the tokenizer (Qwen2: 151,936 rows for 151,665 tokens), so
    new tokens may already have rows: the embeddings never shrink.
    """
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if rows <= old:
        return False
    model.resize_token_embeddings(rows, mean_resizing=False)
    # New rows start at the mean of the old ones: a neutral start, and the same in every run and
    # resume (transformers would draw them at random)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            layer.weight[old:] = layer.weight[:old].mean(0)
    return True


def trainable_token_indices(model, token_ids: list[int]) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices``: the new rows of the embeddings and of an untied head.

    A tied head follows the embeddings in peft by itself; an untied head has its own new rows,
    which must train too (and be saved), or every load would see other random values there.
    """
    names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    indices = {names[embeddings]: list(token_ids)}
    if head is not None and head.weight is not embeddings.weight:
        indices[names[head]] = list(token_ids)
    return indices


def grow_for_adapter(model, adapter_path: str | Path) -> bool:
    """Before an adapter with trainable token rows loads: grow the base's embeddings to hold them."""
    from loratk.engine.models.adapters import read_adapter_config

    indices = read_adapter_config(adapter_path).get("trainable_token_indices") or {}
    ids = [i for rows in (indices.values() if isinstance(indices, dict) else [indices]) for i in rows]
    return bool(ids) and grow_embeddings(model, max(ids) + 1)
