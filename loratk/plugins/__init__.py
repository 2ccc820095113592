"""The plugin layer: hook specifications, the plugin manager and the built-in plugins.

Plugin authors need only ``from loratk.plugins import hookimpl`` (see docs/plugins.md).
"""

from loratk.plugins.hookspecs import hookimpl
from loratk.plugins.manager import LoratkPlugins, get_plugins, reset_plugins

__all__ = ["LoratkPlugins", "get_plugins", "hookimpl", "reset_plugins"]
