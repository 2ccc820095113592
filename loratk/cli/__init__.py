"""The ``loratk`` command group. Commands live one per module and are imported only when used."""

from __future__ import annotations

import importlib
import os
import sys

import click

from loratk import __version__
from loratk.commands import COMMANDS
from loratk.errors import LoratkError


class CommandError(click.ClickException):
    """A LoratkError shown as one line on stderr with its hint, and its exit code."""

    def __init__(self, error: LoratkError):
        super().__init__(error.message)
        self.exit_code = error.exit_code
        self.hint = error.hint

    def format_message(self) -> str:
        message = self.message.rstrip(".")
        return f"{message}. Hint: {self.hint}" if self.hint else message


def debug_enabled(ctx: click.Context | None = None) -> bool:
    if os.environ.get("LORATK_DEBUG", "").lower() in ("1", "true", "yes"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root and root.obj and root.obj.get("debug"))


def plugin_commands() -> dict[str, click.Command]:
    """Subcommands from plugins' ``register_commands`` hooks; a plugin failure only warns."""
    from loratk.plugins import get_plugins

    try:
        registry = get_plugins().commands
    except Exception as error:  # e.g. two plugins adding one command: loratk's own commands still work
        click.echo(f"loratk: warning: plugin commands are unavailable: {error}", err=True)
        return {}
    return {name: registry[name] for name in registry}


class LoratkGroup(click.Group):
    """Lazily imported commands (loratk's own, then plugins'), and errors as one-line messages."""

    def list_commands(self, ctx):
        return sorted({*COMMANDS, *super().list_commands(ctx), *plugin_commands()})

    def get_command(self, ctx, name):
        if name in COMMANDS:
            module_name, attribute = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name) or plugin_commands().get(name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LoratkError as error:
            if debug_enabled(ctx):
                raise
            raise CommandError(error) from error
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # a bug or a library failure: one line unless --debug
            if debug_enabled(ctx):
                raise
            raise CommandError(LoratkError(f"unexpected {type(error).__name__}: {error}",
                                           "rerun with --debug for the full traceback")) from error


@click.group(cls=LoratkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loratk")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (or set LORATK_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """loratk: LoRA and QLoRA fine-tuning of causal language models.

    \b
    Examples:
      loratk train examples/data.jsonl              # the embedded SmolLM2-135M
      loratk train --recipe llama2-7b-4bit data.json
      loratk recipes
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="loratk")


__all__ = ["cli", "main"]
