"""The recipes that ship with loratk (``recipes/`` in the repository, ``loratk/recipes`` installed)."""

from pathlib import Path

from loratk.plugins.hookspecs import hookimpl


def builtin_recipe_folder() -> Path:
    package_root = Path(__file__).resolve().parents[2]
    installed = package_root / "recipes"
    if installed.is_dir():
        return installed
    return package_root.parent / "recipes"  # a source checkout


@hookimpl
def register_recipes(register):
    register(builtin_recipe_folder())
