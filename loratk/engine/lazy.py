"""Package entry points that import their module on first use.

Each engine subpackage names its public functions in its ``__init__`` without importing them, so
``import loratk.engine.memory.estimate`` (or the CLI's ``--help``) never drags in torch through a
package's ``__init__``: the module behind a name is imported when the name is first read.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose ``exports`` map a name to its module."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
