"""``cdp plugins``: what is installed and which hooks each plugin implements."""

from __future__ import annotations

import typer
from rich.table import Table

from plugins.cli.options import JsonOption
from plugins.cli.output import console, print_json
from plugins.manager import describe_plugins

app = typer.Typer(help="Inspect the installed plugins.", no_args_is_help=True)


@app.command("list")
def list_plugins(as_json: JsonOption = False) -> None:
    """List every plugin found through the 'cdp' entry-point group."""
    infos = describe_plugins()
    if as_json:
        print_json([info.as_dict() for info in infos])
        return
    table = Table(title="cdp plugins")
    for column in ("name", "kind", "module", "version", "hooks"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.name, ", ".join(info.kinds), info.module, info.version or "", ", ".join(info.hooks))
    console.print(table)
