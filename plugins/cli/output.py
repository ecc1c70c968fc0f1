"""How every command prints: rich tables for people, stable JSON for machines, errors as one line on stderr."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, keys sorted, so scripts can rely on it."""
    sys.stdout.write(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    sys.stdout.write("\n")


def print_error(message: str) -> None:
    """One clear line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
