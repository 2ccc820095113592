"""Loads the built-in and installed plugins and collects what they register.

A small facade over pluggy with one attribute per kind of registration. Installed plugins are
found through the ``loratk`` entry-point group; one that fails to import or whose hooks raise is
recorded as broken (and named in one warning line) while everything else keeps working.
Set ``LORATK_DISABLE_PLUGINS=name,other`` (or ``all``) to skip installed plugins; built-ins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pluggy

from loratk.errors import PluginError
from loratk.plugins import hookspecs
from loratk.plugins.builtin import BUILTIN_PLUGINS
from loratk.plugins.registry import PluginConflictError, Registry, is_builtin

ENTRY_POINT_GROUP = "loratk"
DISABLE_ENV = "LORATK_DISABLE_PLUGINS"


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    load: Callable[[str, Mapping[str, Any]], Any]
    extensions: tuple[str, ...] = ()


@dataclass
class PluginInfo:
    name: str
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False

    @property
    def active(self) -> bool:
        return self.error is None and not self.disabled


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _normalise_extension(ext: str) -> str:
    ext = ext.lower()
    return ext if ext.startswith(".") else "." + ext


def _check_callable(plugin: str, entry: str, role: str, value: object) -> None:
    if not callable(value):
        raise PluginError(f"plugin {plugin!r} gave {entry!r} a {role} that is not callable: {value!r}",
                          f"pass the function itself, e.g. register({entry!r}, my_{role})")


class LoratkPlugins:
    """Every registered architecture, dataset format, quantization backend, recipe folder and command."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager("loratk")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        for module_name in BUILTIN_PLUGINS:
            self.register(importlib.import_module(module_name), name=module_name, builtin=True)
        if load_entry_points:
            self._load_entry_points()
        self._collected = False

    # -- plugin registration -------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None, builtin: bool = False,
                 version: str | None = None) -> str:
        """Register a plugin object or module (what entry points and tests use)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.info and self.info[name].active:
            raise PluginError(f"a plugin named {name!r} is already registered",
                              "give the new one another name, or unregister the first")
        self.pm.register(plugin, name=name)
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, builtin or is_builtin(name), hooks)
        self._collected = False
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.unregister(name)
            self._mark_broken(name, version, f"unknown hook: {exc}")
        return name

    def unregister(self, name: str) -> None:
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._collected = False

    def _mark_broken(self, name: str, version: str | None, error: str) -> None:
        self.info[name] = PluginInfo(name, version, False, [], error)
        print(f"loratk: warning: plugin {name!r} is broken and was skipped: {error}", file=sys.stderr)

    def _load_entry_points(self) -> None:
        disabled = _disabled_names()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in self.info:  # two installed packages claim one plugin name: keep the first
                print(f"loratk: warning: more than one installed package provides plugin {ep.name!r}; "
                      f"skipped the one from {ep.value}", file=sys.stderr)
                continue
            if "all" in disabled or ep.name in disabled:
                self.info[ep.name] = PluginInfo(ep.name, version, False, disabled=True)
                continue
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name, version=version)
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._mark_broken(ep.name, version, f"{type(exc).__name__}: {exc}")
        self._warn_unknown_disabled(disabled - {"all"})

    def _warn_unknown_disabled(self, names: set[str]) -> None:
        import difflib  # not loratk.config.suggest: config imports the plugins

        installed = sorted(name for name, info in self.info.items() if not info.builtin)
        for name in sorted(names - set(installed)):
            close = difflib.get_close_matches(name, installed, n=1, cutoff=0.6)
            builtin = " (built-in plugins always load)" if any(name in (i, i.rsplit(".", 1)[-1])
                                                              for i in self.info if self.info[i].builtin) else ""
            print(f"loratk: warning: {DISABLE_ENV} names {name!r}, which is no installed plugin{builtin}"
                  f"{f' (did you mean {close[0]!r}?)' if close else ''}; installed: {', '.join(installed) or 'none'}", file=sys.stderr)

    # -- collected registrations ---------------------------------------------------------
    def _collect(self) -> None:
        if self._collected:
            return
        self._architectures: Registry[tuple[str, ...]] = Registry("architecture")
        self._dataset_formats: Registry[DatasetFormat] = Registry("dataset format")
        self._quantization: Registry[Callable[[Mapping[str, Any]], Any]] = Registry("quantization backend")
        self._recipe_folders: list[tuple[Path, str]] = []
        self._commands: Registry[Any] = Registry("command")
        # Built-ins first, so an installed plugin may replace a built-in entry.
        ordered = sorted(self.info.values(), key=lambda i: (not i.builtin, i.name))
        for info in ordered:
            if not info.active:
                continue
            plugin = self.pm.get_plugin(info.name)
            try:
                self._call_hooks(plugin, info.name)
            except PluginConflictError:
                raise
            except Exception as exc:
                self.unregister(info.name)
                self._mark_broken(info.name, info.version, f"{type(exc).__name__}: {exc}")
                self._collected = False
                return self._collect()
        self._collected = True

    def _call_hooks(self, plugin: object, name: str) -> None:
        def architectures(model_type: str, target_modules: Sequence[str], *, override: bool = False) -> None:
            if isinstance(target_modules, str) or not all(isinstance(t, str) for t in target_modules):
                raise PluginError(
                    f"plugin {name!r} gave target_modules {target_modules!r} for {model_type!r}",
                    "pass a list of module names such as ['q_proj', 'v_proj']",
                )
            self._architectures.add(model_type, tuple(target_modules), name, override)

        def dataset_formats(fmt: str, load: Callable, extensions: Sequence[str] = (), *, override: bool = False) -> None:
            _check_callable(name, fmt, "load", load)
            exts = tuple(_normalise_extension(e) for e in ([extensions] if isinstance(extensions, str) else extensions))
            self._dataset_formats.add(fmt, DatasetFormat(fmt, load, exts), name, override)

        def quantization(backend: str, build: Callable, *, override: bool = False) -> None:
            _check_callable(name, backend, "build", build)
            self._quantization.add(backend, build, name, override)

        def recipes(folder: str | os.PathLike) -> None:
            if not Path(folder).is_dir():
                raise NotADirectoryError(f"recipe folder {folder} does not exist")
            self._recipe_folders.append((Path(folder), name))

        callbacks = {
            "register_architectures": architectures,
            "register_dataset_formats": dataset_formats,
            "register_quantization_backends": quantization,
            "register_recipes": recipes,
        }
        hooks = self.info[name].hooks
        for hook_name, callback in callbacks.items():
            if hook_name in hooks:
                getattr(plugin, hook_name)(register=callback)
        if "register_commands" in hooks:
            self._collect_commands(plugin, name)

    def _collect_commands(self, plugin: object, name: str) -> None:
        import click

        from loratk.commands import COMMANDS

        # Each plugin adds to a group of its own, so loratk knows who added which command.
        group = click.Group(name)
        plugin.register_commands(cli=group)
        for command_name, command in group.commands.items():
            if command_name in COMMANDS:
                raise ValueError(f"command {command_name!r} is one of loratk's own and cannot be replaced")
            self._commands.add(command_name, command, name)

    @property
    def architectures(self) -> Registry[tuple[str, ...]]:
        self._collect()
        return self._architectures

    @property
    def dataset_formats(self) -> Registry[DatasetFormat]:
        self._collect()
        return self._dataset_formats

    @property
    def quantization_backends(self) -> Registry[Callable[[Mapping[str, Any]], Any]]:
        self._collect()
        return self._quantization

    @property
    def recipe_folders(self) -> list[tuple[Path, str]]:
        self._collect()
        return list(self._recipe_folders)

    @property
    def commands(self) -> Registry[Any]:
        """Subcommands (``click.Command``) that plugins added, by name."""
        self._collect()
        return self._commands

    def format_for_extension(self, extension: str) -> str | None:
        """The dataset format registered for a file extension (latest registration wins)."""
        extension = _normalise_extension(extension)
        match = None
        for entry in self.dataset_formats.entries():
            if extension in entry.value.extensions:
                if match is None or is_builtin(match.plugin):
                    match = entry
        return match.name if match else None


_plugins: LoratkPlugins | None = None


def get_plugins() -> LoratkPlugins:
    """The process-wide plugin manager, built on first use."""
    global _plugins
    if _plugins is None:
        _plugins = LoratkPlugins()
    return _plugins


def reset_plugins() -> None:
    """Forget the plugin manager so the next ``get_plugins()`` rebuilds it (tests use this)."""
    global _plugins
    _plugins = None
