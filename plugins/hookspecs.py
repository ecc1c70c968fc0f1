# mypy: disable-error-code="empty-body"
"""Every hook a CDP plugin may implement.

Each hook is a bare function with a one-line summary; docs/plugins.md documents each one with an example, and a test
keeps the two in step. Implementations may accept any subset of a hook's arguments (pluggy's rule), and they are
registered by exposing a ``cdp`` entry point that points at the module holding them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from plugins.descriptors import (
        AlertSink,
        CommandGroup,
        DestinationDescriptor,
        LoaderDescriptor,
        SourceDescriptor,
        TransformDescriptor,
    )

PROJECT_NAME = "cdp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cdp_sources() -> list[SourceDescriptor]:
    """Return the data sources this plugin provides: name, Singer tap class, streams, sandbox, webhook handler."""


@hookspec
def cdp_alert_sinks() -> list[AlertSink]:
    """Return alert sinks that receive operational alerts (schema drift, DLQ volume, extraction failures)."""


@hookspec
def cdp_commands() -> list[CommandGroup]:
    """Return command groups the plugin adds to the ``cdp`` CLI (e.g. ``cdp webhooks``), as typer apps."""


@hookspec
def cdp_destinations() -> list[DestinationDescriptor]:
    """Return the Singer targets this plugin provides (where extracted records land)."""


@hookspec
def cdp_transforms() -> list[TransformDescriptor]:
    """Return the transforms this plugin provides (raw zone to curated Parquet). Declared, not yet used."""


@hookspec
def cdp_loaders() -> list[LoaderDescriptor]:
    """Return the loaders this plugin provides (curated data into a serving store). Declared, not yet used."""
