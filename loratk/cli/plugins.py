"""``loratk plugins``: list installed plugins, their hooks and what each registered."""

from __future__ import annotations

import json

import click

LABELS = {"architectures": "architectures", "dataset_formats": "formats",
          "quantization_backends": "quantization", "export_formats": "export", "recipes": "recipes",
          "commands": "commands"}


def _registered_text(registered: dict[str, list[str]]) -> str:
    lines = [f"{LABELS[kind]}: {', '.join(names)}" for kind, names in registered.items() if names]
    return "\n".join(lines) or "-"


@click.command(epilog="""
\b
Examples:
  loratk plugins                  # installed plugins
  loratk plugins --all            # and loratk's built-in ones
  loratk plugins --json | jq '.[].name'
  LORATK_DISABLE_PLUGINS=all loratk train data.jsonl   # run without installed plugins
""")
@click.option("--all", "include_builtin", is_flag=True, help="Include loratk's built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects) instead of a table.")
def plugins(include_builtin: bool, as_json: bool) -> None:
    """List plugins: name, version, hooks and what each registered.

    Installed plugins are packages with an entry point in the 'loratk' group; broken ones are
    listed with their error, and LORATK_DISABLE_PLUGINS=name,... (or all) skips them.
    """
    from loratk.plugins import get_plugins
    from loratk.plugins.listing import describe_plugins

    records = describe_plugins(get_plugins(), include_builtin)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("No plugins installed. 'loratk plugins --all' lists the built-in ones; "
                   "docs/plugins.md shows how to write one.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="loratk plugins")
    for column in ("name", "version", "status", "hooks", "registered"):
        table.add_column(column, style="bold" if column == "name" else None, overflow="fold")
    for record in records:
        status = record["status"] if record["status"] != "broken" else f"broken: {record['error']}"
        table.add_row(record["name"], record["version"] or "-", status,
                      "\n".join(record["hooks"]) or "-", _registered_text(record["registered"]))
    Console().print(table)
