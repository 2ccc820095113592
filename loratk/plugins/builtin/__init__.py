"""loratk's own plugins. They register through the same hooks a third-party plugin uses."""

BUILTIN_PLUGINS = (
    "loratk.plugins.builtin.architectures",
    "loratk.plugins.builtin.dataset_formats",
    "loratk.plugins.builtin.export_formats",
    "loratk.plugins.builtin.quantization",
    "loratk.plugins.builtin.recipes",
)
