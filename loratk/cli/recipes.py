"""``loratk recipes``: list the recipes, show one."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True, epilog="""
\b
Examples:
  loratk recipes
  loratk recipes show llama2-7b-4bit
""")
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the available training recipes (built-in and from plugins)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from loratk.config.recipes import list_recipes

    table = Table(title="loratk recipes")
    table.add_column("name", style="bold")
    table.add_column("description")
    for info in list_recipes():
        table.add_row(info.name, info.description)
    Console().print(table)


@recipes.command()
@click.argument("name")
def show(name: str) -> None:
    """Print the recipe NAME (a name or a path) as written."""
    from loratk.config.recipes import find_recipe

    click.echo(find_recipe(name).read_text(encoding="utf-8"), nl=False)
