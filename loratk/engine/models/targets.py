"""Choosing the modules LoRA adapts: the user's list, the architecture's defaults, or every Linear."""

from __future__ import annotations

from collections.abc import Collection

from loratk.errors import UsageError


def linear_modules(model) -> dict[str, int]:
    """Short names of the model's Linear-like modules (output head excluded) and how many of each."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if module is head or not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        short = name.rsplit(".", 1)[-1]
        counts[short] = counts.get(short, 0) + 1
    return counts


def resolve_target_modules(model, requested: list[str] | str | None) -> list[str] | str:
    """The ``target_modules`` for peft's LoraConfig; unknown names are a usage error."""
    return choose_target_modules(getattr(model.config, "model_type", None), linear_modules(model), requested)


def choose_target_modules(model_type: str | None, available: Collection[str],
                          requested: list[str] | str | None) -> list[str] | str:
    """:func:`resolve_target_modules` from a model's type and the short names of its Linear modules."""
    from loratk.plugins import get_plugins

    if requested == "all-linear":
        return "all-linear"
    if requested is None:
        defaults = get_plugins().architectures.get(model_type)
        if defaults:
            present = [name for name in defaults if name in available]
            if present:
                return present
        return sorted(available)
    missing = [name for name in requested if name not in available]
    head_name = output_head_name(model)
    if head_name in missing:
        raise UsageError(f"target module {head_name!r} is the output head{tied_note(model)}; loratk adapts the "
                         "Linear modules inside the transformer blocks, not the head",
                         f"leave {head_name} out of --target_modules; its Linear modules are: {', '.join(sorted(available))}")
    if missing:
        raise UsageError(
            f"target module{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} "
            f"match{'' if len(missing) > 1 else 'es'} no Linear module of this {model_type or 'this'} model; "
            f"its Linear modules are: {', '.join(sorted(available))}",
            "pass names from that list to --target_modules, 'all-linear', or leave it out for the defaults",
        )
    return list(requested)


def output_head_name(model) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is head), None)


def tied_note(model) -> str:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is not None and embeddings is not None and head.weight is embeddings.weight:
        return ", a Linear that shares (is tied to) the input embedding's weight"
    return ", a Linear outside the transformer blocks"
