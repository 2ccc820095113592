"""Click options built from the ``TrainConfig`` fields, in both spellings users type.

``--lora_rank`` (the original script's spelling) and ``--lora-rank`` (click's) both work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import click
from click.core import ParameterSource

from loratk.config.train_config import TrainConfig

_TYPES = {"int": int, "float": float, "str": str}


def _spellings(name: str) -> list[str]:
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def config_option(f: dataclasses.Field) -> Callable:
    meta = f.metadata
    names = _spellings(f.name) + list(meta.get("aliases", []))
    default = f.default if f.default is not dataclasses.MISSING else None
    if meta.get("flag"):
        if meta.get("negatable"):
            pair = [f"{n}/--no-{n[2:]}" for n in _spellings(f.name)]
            return click.option(*pair, f.name, default=None, help=meta["help"])
        return click.option(*names, f.name, is_flag=True, default=default, help=meta["help"])
    base = f.type.split("|")[0].strip() if isinstance(f.type, str) else "str"
    kind: Any = click.Choice(meta["choices"]) if "choices" in meta else _TYPES.get(base, str)
    if meta.get("multiple"):
        return click.option(*names, f.name, multiple=True, type=str, help=meta["help"])
    return click.option(*names, f.name, type=kind, default=default, show_default=default is not None,
                        help=meta["help"])


def train_config_options(exclude: Iterable[str] = ()) -> Callable:
    """Decorate a command with one option per TrainConfig field (minus ``exclude``)."""
    skipped = set(exclude)

    def decorate(command: Callable) -> Callable:
        for f in reversed(dataclasses.fields(TrainConfig)):
            if f.name not in skipped:
                command = config_option(f)(command)
        return command

    return decorate


def explicit_values(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """Only the options the user actually gave, so a recipe's values are not overwritten by defaults."""
    given = {}
    for name, value in params.items():
        if name not in TrainConfig.field_names():
            continue
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT):
            given[name] = list(value) if isinstance(value, tuple) else value
    return given
