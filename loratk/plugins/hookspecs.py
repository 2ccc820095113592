"""The hooks a loratk plugin can implement.

Each hook receives a ``register`` callback rather than returning values, so loratk can validate
what a plugin adds, detect two plugins claiming one name, and record who registered what.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("loratk")
hookimpl = pluggy.HookimplMarker("loratk")


@hookspec
def register_architectures(register):
    """Give default LoRA targets: ``register(model_type: str, target_modules: Sequence[str])``."""


@hookspec
def register_dataset_formats(register):
    """Add a data source: ``register(name, load: Callable[[str, Mapping[str, Any]], datasets.Dataset], extensions=())``."""


@hookspec
def register_quantization_backends(register):
    """Add a quantization method: ``register(name, build: Callable[[Mapping[str, Any]], Any])`` returning a quantization_config."""


@hookspec
def register_recipes(register):
    """Add recipes: ``register(folder)`` with a folder of ``*.yaml`` recipe files."""
