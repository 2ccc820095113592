"""The hooks a loratk plugin can implement.

Each hook receives a ``register`` callback (or, for commands, the click group) rather than
returning values, so loratk can validate what a plugin adds, detect two plugins claiming one name,
and record who registered what. ``docs/plugins.md`` documents every hook with an example.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("loratk")
hookimpl = pluggy.HookimplMarker("loratk")


@hookspec
def register_architectures(register):
    """Give default LoRA targets: ``register(model_type: str, target_modules: Sequence[str], *, override=False)``."""


@hookspec
def register_dataset_formats(register):
    """Add a data source: ``register(name, load: Callable[[str, Mapping], datasets.Dataset], extensions=(), *, override=False)``."""


@hookspec
def register_quantization_backends(register):
    """Add a quantization method: ``register(name, build: Callable[[Mapping], quantization_config], *, override=False)``."""


@hookspec
def register_export_formats(register):
    """Add an export format: ``register(name, export: Callable[[model, tokenizer, Mapping], list[Path]], *, override=False)``."""


@hookspec
def register_recipes(register):
    """Add recipes: ``register(folder)`` with a folder of ``*.yaml`` recipe files."""


@hookspec
def register_commands(cli):
    """Add subcommands: ``@cli.command()`` or ``cli.add_command(command)`` on the click group ``cli``."""
