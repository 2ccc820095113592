"""What ``loratk plugins`` shows: each plugin, its state, its hooks and what it registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratk import __version__
from loratk.plugins.manager import LoratkPlugins

KINDS = ("architectures", "dataset_formats", "quantization_backends", "export_formats", "recipes", "commands")


def _recipe_names(folders: list[tuple[Path, str]], plugin: str) -> list[str]:
    names = []
    for folder, owner in folders:
        if owner == plugin:
            names += [path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml")]
    return sorted(names)


def describe_plugins(plugins: LoratkPlugins, include_builtin: bool = False) -> list[dict[str, Any]]:
    """One JSON-ready record per plugin, installed ones first, sorted by name.

    Reading the registrations runs every hook, so a plugin whose hooks raise shows up as broken.
    """
    registries = {
        "architectures": plugins.architectures,
        "dataset_formats": plugins.dataset_formats,
        "quantization_backends": plugins.quantization_backends,
        "export_formats": plugins.export_formats,
        "commands": plugins.commands,
    }
    folders = plugins.recipe_folders
    records = []
    for info in sorted(plugins.info.values(), key=lambda i: (i.builtin, i.name)):
        if info.builtin and not include_builtin:
            continue
        registered = {kind: registry.by_plugin(info.name) for kind, registry in registries.items()}
        registered["recipes"] = _recipe_names(folders, info.name)
        status = "broken" if info.error else "disabled" if info.disabled else "ok"
        records.append({
            "name": info.name,
            "version": __version__ if info.builtin else info.version,
            "builtin": info.builtin,
            "status": status,
            "error": info.error,
            "hooks": list(info.hooks),
            "registered": {kind: registered[kind] for kind in KINDS},
        })
    return records
