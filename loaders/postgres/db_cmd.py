"""``cdp db start|stop|status|url``: the embedded PostgreSQL in ``data/postgres`` (see embedded.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loaders.postgres import embedded

app = typer.Typer(help="The embedded PostgreSQL: start, stop, status, url.", no_args_is_help=True)
DataDir = Annotated[Path, typer.Option("--data-dir", help="The server's data folder.")]


@app.command()
def start(data_dir: DataDir = embedded.DEFAULT_DATA_DIR) -> None:
    """Start the embedded PostgreSQL (initialised on first use) and print its URL."""
    typer.echo(embedded.start(data_dir))


@app.command()
def stop(data_dir: DataDir = embedded.DEFAULT_DATA_DIR) -> None:
    """Stop the embedded PostgreSQL."""
    typer.echo("stopped" if embedded.stop(data_dir) else "not running")


@app.command()
def status(data_dir: DataDir = embedded.DEFAULT_DATA_DIR) -> None:
    """Say whether the embedded PostgreSQL runs (exit code 1 when it does not)."""
    url = embedded.url(data_dir)
    typer.echo(f"running: {url}" if url else "not running")
    if url is None:
        raise typer.Exit(1)


@app.command()
def url(data_dir: DataDir = embedded.DEFAULT_DATA_DIR) -> None:
    """Print the running server's URL (for psql, CDP_POSTGRES_URL); exit code 1 when it does not run."""
    found = embedded.url(data_dir)
    if found is None:
        typer.echo("not running; start it with: cdp db start", err=True)
        raise typer.Exit(1)
    typer.echo(found)
