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


@dataclass(frozen=True)
class ModelRef:
    """Where ``MODEL``'s config is, decided without reading it (so without torch or transformers)."""

    shown: str  # the name reports print
    name: str | None  # the model itself (a recipe's model_name_or_path)
    kind: str  # embedded (its cached conversion), embedded-registry, local, registry or hub
    source: str  # a few words on where the config comes from
    trust_remote_code: bool = False
    recipe_values: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        """The folder holding config.json for a local or embedded model."""
        if self.kind == "embedded":
            from loratk.engine.models.embedded import embedded_cache_dir

            return embedded_cache_dir()
        return Path(self.name).expanduser() if self.kind == "local" else None

    @property
    def registry_id(self) -> str | None:
        return {"registry": self.name, "embedded-registry": EMBEDDED_REGISTRY_ID}.get(self.kind)


KIND_SOURCES = {"embedded": "embedded default model", "embedded-registry": "embedded default model (registry config)",
                "local": "local folder", "registry": "built-in registry", "hub": "Hugging Face Hub"}


def locate_model(name: str | None, trust_remote_code: bool = False) -> ModelRef:
    """Resolve ``name`` (a recipe name uses its model) to the kind of place its config is read from."""
    from loratk.engine.models.embedded import embedded_cache_dir, is_embedded

    recipe_values: dict[str, Any] = {}
    shown = name or "smollm2-135m"
    recipe = recipe_model(name) if name and not Path(name).expanduser().exists() and canonical_id(name) is None else None
    if recipe is not None:
        name, recipe_values = recipe
        trust_remote_code = trust_remote_code or bool(recipe_values.get("trust_remote_code"))
    if is_embedded(name):
        kind = "embedded" if (embedded_cache_dir() / "config.json").is_file() else "embedded-registry"
    elif Path(name).expanduser().exists():
        kind = "local"
    else:
        kind = "registry" if canonical_id(name) is not None else "hub"
    source = KIND_SOURCES[kind]
    if recipe is not None:
        source = f"recipe {shown} ({name or 'smollm2-135m'}, {source})"
        shown = name or "smollm2-135m"
    return ModelRef(shown, name, kind, source, trust_remote_code, recipe_values)


def resolve_config(ref: ModelRef):
    """The model's transformers config."""
    quiet_libraries()
    from loratk.engine.models.loading import load_config, resolve_model_path

    if ref.kind == "embedded":
        return load_config(str(ref.folder))
    if ref.registry_id is not None:
        return _registry_config(ref.registry_id)
    if ref.kind == "local":
        return load_config(resolve_model_path(ref.name), ref.trust_remote_code)
    name = ref.name
    path = resolve_model_path(name)  # raises for path-shaped names that do not exist
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # the error below says it in one line
    try:
        return load_config(path, ref.trust_remote_code)
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
    return meta_model_of(locate_model(name, trust_remote_code))


def meta_model_of(ref: ModelRef) -> MetaModel:
    config = resolve_config(ref)
    return MetaModel(ref.shown, ref.source, meta_model_from_config(config, ref.trust_remote_code), ref.recipe_values)


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
