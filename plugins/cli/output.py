"""How every command prints: rich tables for people, stable JSON for machines, errors as one line on stderr.

Both consoles print text literally (``markup=False``): user text such as a pattern ``[a-z0-9_]`` in a message, a key
or a table cell must never be read as rich markup. Styling is explicit, with ``styled`` (a ``rich.text.Text``)."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Literal text with some parts styled: ``styled(("error:", "bold red"), " ", message)``."""
    return Text.assemble(*parts)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, keys sorted, so scripts can rely on it."""
    sys.stdout.write(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    sys.stdout.write("\n")


def print_error(message: str) -> None:
    """One clear line on stderr."""
    err_console.print(styled(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
