"""The plugin layer: hook specifications, the plugin manager and the built-in plugins."""

from loratk.plugins.manager import LoratkPlugins, get_plugins, reset_plugins

__all__ = ["LoratkPlugins", "get_plugins", "reset_plugins"]
