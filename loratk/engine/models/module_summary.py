"""What ``loratk inspect-modules`` reads off a model, as plain data: made once from a meta model,
kept as JSON (``loratk.engine.memory.shape_store``), and turned into the report without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loratk.engine.models.meta_model import (LinearGroup, linear_groups, lora_parameter_count, module_tree,
                                             parameter_count, targeted_names)
from loratk.engine.models.targets import choose_target_modules


@dataclass(frozen=True)
class ModuleSummary:
    """A model's Linear modules, parameter count and module tree."""

    model_type: str
    linears: tuple[LinearGroup, ...]
    total_parameters: int
    tree: tuple[tuple[int, str, str, int], ...]  # (depth, name, class name, own parameters)

    @classmethod
    def of(cls, model) -> ModuleSummary:
        return cls(model.config.model_type, tuple(linear_groups(model)), parameter_count(model),
                   tuple(module_tree(model)))

    def linear_names(self) -> list[str]:
        """Short names of the Linear modules (output head excluded), in model order."""
        return list(dict.fromkeys(g.name for g in self.linears))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "total_parameters": self.total_parameters,
                "linear_modules": [[g.name, g.in_features, g.out_features, g.count, g.has_bias]
                                   for g in self.linears],
                "tree": [list(row) for row in self.tree]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleSummary:
        """The summary :meth:`to_dict` wrote; ValueError when ``data`` is not one."""
        linears = tuple(LinearGroup(*_typed(row, (str, int, int, int, bool))) for row in data["linear_modules"])
        tree = tuple(tuple(_typed(row, (int, str, str, int))) for row in data["tree"])
        return cls(_typed([data["model_type"]], (str,))[0], linears, _typed([data["total_parameters"]], (int,))[0],
                   tree)


def _typed(row: list, types: tuple[type, ...]) -> list:
    if len(row) != len(types) or not all(type(value) is kind for value, kind in zip(row, types)):
        raise ValueError(f"expected values of types {[t.__name__ for t in types]}, got {row!r}")
    return row


def module_report(name: str, source: str, modules: ModuleSummary, requested: list[str] | str | None, rank: int,
                  tree: bool = False) -> dict:
    """What ``loratk inspect-modules`` shows, as plain data: groups, defaults, the LoRA count."""
    groups = list(modules.linears)
    auto = choose_target_modules(modules.model_type, modules.linear_names(), None)
    targets = choose_target_modules(modules.model_type, modules.linear_names(), requested)
    chosen = set(targeted_names(groups, targets))
    total = modules.total_parameters
    trainable = lora_parameter_count(groups, targets, rank)
    report = {
        "model": name, "source": source, "model_type": modules.model_type,
        "total_parameters": total,
        "linear_modules": [{"name": g.name, "in_features": g.in_features, "out_features": g.out_features,
                            "count": g.count, "parameters": g.parameters, "targeted": g.name in chosen}
                           for g in groups],
        "auto_targets": auto if isinstance(auto, str) else list(auto),
        "lora": {"rank": rank, "target_modules": targets if isinstance(targets, str) else list(targets),
                 "trainable_parameters": trainable, "trainable_percent": 100 * trainable / (total + trainable)},
    }
    if tree:
        report["tree"] = [{"depth": d, "name": n, "class": c, "parameters": p} for d, n, c, p in modules.tree]
    return report
