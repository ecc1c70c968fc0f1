"""Segments (``cdp_commands``: ``segment``): audiences over unified customers, stored and refreshed in PostgreSQL.

The model is model.py, the storage and refresh store.py, the commands segment_cmd.py; docs/segments.md says how
they fit.
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import CommandGroup


@hookimpl
def cdp_commands() -> list[CommandGroup]:
    from activators.segments.segment_cmd import app

    return [
        CommandGroup(
            name="segment",
            app=app,
            help="Segments: audiences over unified customers (apply, create, list, show, preview, refresh, delete, "
            "overlap, export).",
        )
    ]
