"""loratk's own plugins. They register through the same hooks a third-party plugin uses."""

BUILTIN_PLUGINS = (
    "loratk.plugins.builtin.architectures",
    "loratk.plugins.builtin.dataset_formats",
    "loratk.engine.export.formats",  # in the engine, so the plugin layer never imports it
    "loratk.plugins.builtin.quantization",
    "loratk.plugins.builtin.recipes",
)
