"""YAML recipes: named bundles of training defaults, layered defaults < recipe < command line.

A recipe is a flat mapping of ``TrainConfig`` keys plus two of its own: ``description`` (one
line for ``loratk recipes``) and ``extends`` (the name or path of a recipe it builds on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from loratk.config.suggest import did_you_mean
from loratk.config.train_config import TrainConfig
from loratk.errors import ConfigError, UsageError

RECIPE_META_KEYS = ("description", "extends")
RUN_FILE = "loratk_run.yaml"


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    path: Path
    description: str
    plugin: str


def list_recipes() -> list[RecipeInfo]:
    """Every recipe from every registered recipe folder; a later folder's name wins."""
    from loratk.plugins import get_plugins

    found: dict[str, RecipeInfo] = {}
    for folder, plugin in get_plugins().recipe_folders:
        for path in sorted(folder.rglob("*.yaml")):
            name = path.relative_to(folder).with_suffix("").as_posix()
            found[name] = RecipeInfo(name, path, _description(path), plugin)
    return [found[name] for name in sorted(found)]


def _description(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def find_recipe(name_or_path: str) -> Path:
    """The file for a recipe name or path; unknown names get close suggestions."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    recipes = {info.name: info.path for info in list_recipes()}
    if name_or_path in recipes:
        return recipes[name_or_path]
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path and name_or_path not in recipes
    if looks_like_path and not path.exists():
        raise UsageError(f"recipe file {name_or_path} does not exist", "check the path, or run 'loratk recipes' for names")
    raise UsageError(
        f"unknown recipe {name_or_path!r}{did_you_mean(name_or_path, recipes)}",
        "run 'loratk recipes' to list them, or pass a path to a YAML file",
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"recipe {path} is not valid YAML{where}", "fix the YAML syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} holds a {type(data).__name__}, not a mapping of options", "write it as key: value lines")
    return data


def load_recipe(name_or_path: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's options with everything it ``extends`` merged underneath, keys checked."""
    path = find_recipe(name_or_path).resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise UsageError(f"recipes extend each other in a cycle: {cycle}", "remove one of the extends: lines")
    data = _read_yaml(path)
    values: dict[str, Any] = {}
    parent = data.get("extends")
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError([f"extends must be a recipe name or path, got {parent!r}"], f"recipe {path}")
        relative = path.parent / parent
        values.update(load_recipe(str(relative) if relative.is_file() else parent, (*_chain, path)))
    own = {k: v for k, v in data.items() if k not in RECIPE_META_KEYS}
    known = TrainConfig.field_names()
    problems = [f"unknown key {k!r}{did_you_mean(k, known)}" for k in own if k not in known]
    if problems:
        raise ConfigError(problems, f"recipe {path}")
    values.update(own)
    return values


def resolve_config(recipe: str | None, command_line: Mapping[str, Any]) -> TrainConfig:
    """Built-in defaults < recipe < command-line values (only the flags the user gave)."""
    values: dict[str, Any] = {}
    source = "command line"
    if recipe:
        values.update(load_recipe(recipe))
        source = f"recipe {recipe} with command line"
    values.update(command_line)
    return TrainConfig.from_mapping(values, source)


def dump_run_config(config: TrainConfig, header: str) -> str:
    """The text of ``loratk_run.yaml``: a runnable recipe that reproduces the run."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump({"description": "Resolved configuration of a finished loratk run",
                           **config.recorded()}, sort_keys=False, allow_unicode=True)
    return comment + body
