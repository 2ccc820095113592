"""A model without weights: built on the meta device from its config alone, in well under a second.

``MODEL`` may be the embedded default, a local folder, a Hub id from the built-in registry of
popular models (``loratk.config.known_models``), a recipe name (its ``model_name_or_path``) or any
other Hub id (its config is fetched, or read from the Hugging Face cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratk.config.known_models import canonical_id, known_model_config
from loratk.engine.quiet import quiet_libraries
from loratk.errors import ModelError

EMBEDDED_REGISTRY_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class MetaModel:
    """A weightless model and where its config came from."""

    name: str
    source: str
    model: Any
    recipe_values: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


@dataclass(frozen=True)
class LinearGroup:
    """Linear modules sharing a short name and shape (``q_proj`` 4096 -> 4096, 32 of them)."""

    name: str
    in_features: int
    out_features: int
    count: int
    has_bias: bool

    @property
    def parameters(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.has_bias else 0))

    def lora_parameters(self, rank: int) -> int:
        return self.count * rank * (self.in_features + self.out_features)


def recipe_model(name: str) -> tuple[str | None, dict[str, Any]] | None:
    """``(model_name_or_path, recipe values)`` when ``name`` is a recipe's name, else None."""
    from loratk.config.recipes import list_recipes, load_recipe

    if name not in {info.name for info in list_recipes()}:
        return None
    values = load_recipe(name)
    return values.get("model_name_or_path"), values


def resolve_config(name: str | None, trust_remote_code: bool = False) -> tuple[Any, str]:
    """The model's transformers config and a few words on where it came from."""
    quiet_libraries()
    from loratk.engine.models.embedded import embedded_cache_dir, is_embedded
    from loratk.engine.models.loading import load_config, resolve_model_path

    if is_embedded(name):
        cached = embedded_cache_dir()
        if (cached / "config.json").is_file():
            return load_config(str(cached)), "embedded default model"
        return _registry_config(EMBEDDED_REGISTRY_ID), "embedded default model (registry config)"
    if Path(name).expanduser().exists():
        return load_config(resolve_model_path(name), trust_remote_code), "local folder"
    if canonical_id(name) is not None:
        return _registry_config(name), "built-in registry"
    path = resolve_model_path(name)  # raises for path-shaped names that do not exist
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # the error below says it in one line
    try:
        return load_config(path, trust_remote_code), "Hugging Face Hub"
    except ModelError as exc:
        from loratk.config.known_models import known_model_ids
        from loratk.config.suggest import did_you_mean

        raise ModelError(
            f"unknown model {name!r}: not a local folder, recipe or built-in model, and not reachable on the "
            f"Hugging Face Hub{did_you_mean(name, known_model_ids())}",
            exc.hint if "trust_remote_code" in (exc.hint or "") else
            "pass a folder holding config.json, a recipe name, or one of the built-in models "
            "(e.g. meta-llama/Llama-2-7b-hf; see docs/memory.md)",
        ) from exc
    finally:
        hub_logger.setLevel(level)


def _registry_config(hub_id: str):
    from transformers import AutoConfig

    values = known_model_config(hub_id)
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values)
    config.name_or_path = canonical_id(hub_id)
    return config


def build_meta_model(name: str | None, trust_remote_code: bool = False) -> MetaModel:
    """Resolve ``name`` (a recipe name uses its model) and build the model with no weight memory."""
    recipe_values: dict[str, Any] = {}
    shown = name or "smollm2-135m"
    recipe = recipe_model(name) if name and not Path(name).expanduser().exists() and canonical_id(name) is None else None
    if recipe is not None:
        name, recipe_values = recipe
        trust_remote_code = trust_remote_code or bool(recipe_values.get("trust_remote_code"))
    config, source = resolve_config(name, trust_remote_code)
    if recipe is not None:
        source = f"recipe {shown} ({name or 'smollm2-135m'}, {source})"
        shown = name or "smollm2-135m"
    return MetaModel(shown, source, meta_model_from_config(config, trust_remote_code), recipe_values)


def meta_model_from_config(config, trust_remote_code: bool = False):
    """A causal LM with every parameter on the meta device (no memory, no initialisation)."""
    quiet_libraries()
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config.use_cache = False
    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelError(f"cannot build {getattr(config, 'model_type', 'this model')} as a causal language model: "
                         f"{exc}", "loratk trains decoder-only (causal) LMs") from exc
    # init_empty_weights swaps parameters as they are registered, which unties tied embeddings.
    model.tie_weights()
    return model


def linear_groups(model) -> list[LinearGroup]:
    """The Linear-like modules (output head excluded), grouped by short name and shape, in model order."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    groups: dict[tuple[str, int, int, bool], int] = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear):
            shape = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            shape = (module.weight.shape[0], module.nf)
        else:
            continue
        key = (name.rsplit(".", 1)[-1], *shape, getattr(module, "bias", None) is not None)
        groups[key] = groups.get(key, 0) + 1
    return [LinearGroup(short, fan_in, fan_out, count, bias) for (short, fan_in, fan_out, bias), count in groups.items()]


def lora_parameter_count(groups: list[LinearGroup], targets: list[str] | str, rank: int) -> int:
    """Trainable parameters LoRA adds: r x (in + out) for every targeted Linear module."""
    chosen = [g for g in groups if targets == "all-linear" or g.name in targets]
    return sum(g.lora_parameters(rank) for g in chosen)


def targeted_names(groups: list[LinearGroup], targets: list[str] | str) -> list[str]:
    names = list(dict.fromkeys(g.name for g in groups))
    return names if targets == "all-linear" else [n for n in names if n in targets]


def parameter_count(model) -> int:
    """Every parameter once (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def module_tree(model, max_depth: int | None = None) -> list[tuple[int, str, str, int]]:
    """``(depth, name, class name, own parameter count)`` for every module, in order."""
    rows = []
    for name, module in model.named_modules():
        depth = 0 if not name else name.count(".") + 1
        if max_depth is not None and depth > max_depth:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((depth, name or "(model)", type(module).__name__, own))
    return rows


def module_report(meta: MetaModel, requested: list[str] | str | None, rank: int, tree: bool = False,
                  **variants: Any) -> dict:
    """What ``loratk inspect-modules`` shows, as plain data: groups, defaults, the LoRA count.

    ``variants``: ``use_dora``, ``rank_pattern``, ``modules_to_save``, ``new_tokens`` (a count), as
    ``loratk.engine.models.variant_counts.variant_counts`` takes them."""
    from loratk.engine.models.targets import resolve_target_modules
    from loratk.engine.models.variant_counts import variant_counts

    model = meta.model
    groups = linear_groups(model)
    auto = resolve_target_modules(model, None)
    targets = resolve_target_modules(model, requested)
    chosen = set(targeted_names(groups, targets))
    total = parameter_count(model)
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    counts = variant_counts(groups, targets, rank, hidden=embeddings.weight.shape[1],
                            vocab=embeddings.weight.shape[0],
                            head_tied=head is None or head.weight is embeddings.weight, **variants)
    trainable = counts.trainable
    report = {
        "model": meta.name, "source": meta.source, "model_type": model.config.model_type,
        "total_parameters": total,
        "linear_modules": [{"name": g.name, "in_features": g.in_features, "out_features": g.out_features,
                            "count": g.count, "parameters": g.parameters, "targeted": g.name in chosen}
                           for g in groups],
        "auto_targets": auto if isinstance(auto, str) else list(auto),
        "lora": {"rank": rank, "target_modules": targets if isinstance(targets, str) else list(targets),
                 "trainable_parameters": trainable, "trainable_percent": 100 * trainable / (total + trainable),
                 "lora_parameters": counts.lora, "dora_magnitudes": counts.dora_magnitudes,
                 "modules_to_save_parameters": counts.full_modules, "new_token_parameters": counts.token_rows},
    }
    if tree:
        report["tree"] = [{"depth": d, "name": n, "class": c, "parameters": p} for d, n, c, p in module_tree(model)]
    return report
