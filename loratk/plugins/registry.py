"""Named registries that remember which plugin added each entry and refuse silent clashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from loratk.errors import PluginError

T = TypeVar("T")

BUILTIN_PREFIX = "loratk."


class PluginConflictError(PluginError):
    """Two plugins claim one name: the user must choose, so loratk stops instead of guessing."""


def is_builtin(plugin_name: str) -> bool:
    return plugin_name.startswith(BUILTIN_PREFIX)


@dataclass
class Entry(Generic[T]):
    name: str
    value: T
    plugin: str
    override: bool = False
    replaced: list[str] = field(default_factory=list)


class Registry(Generic[T]):
    """One kind of registration (architectures, dataset formats, ...), keyed by name.

    A third-party plugin may replace a built-in entry. Two third-party plugins registering the
    same name is an error naming both, unless exactly one of them passes ``override=True``: that
    one wins, whichever registers first.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, value: T, plugin: str, override: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}",
                "names must be non-empty strings",
            )
        existing = self._entries.get(name)
        if existing is not None and existing.plugin != plugin:
            if existing.override and not override and not is_builtin(plugin):
                existing.replaced.append(plugin)  # the earlier override wins
                return
            if existing.override == override and not is_builtin(existing.plugin):
                raise PluginConflictError(
                    f"{self.kind} {name!r} is registered by both {existing.plugin!r} and {plugin!r}",
                    f"uninstall one of them, disable one with LORATK_DISABLE_PLUGINS={plugin}, "
                    "or have one register with override=True",
                )
            replaced = existing.replaced + [existing.plugin]
        else:
            replaced = []
        self._entries[name] = Entry(name, value, plugin, override, replaced)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name].value

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, default: Any = None) -> T | Any:
        entry = self._entries.get(name)
        return default if entry is None else entry.value

    def entry(self, name: str) -> Entry[T]:
        return self._entries[name]

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self]

    def by_plugin(self, plugin: str) -> list[str]:
        return [n for n in self if self._entries[n].plugin == plugin]
