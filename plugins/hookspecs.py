# mypy: disable-error-code="empty-body"
"""Every hook a CDP plugin may implement.

Each hook is a bare function with a one-line summary; docs/plugins.md documents each one with an example, and a test
keeps the two in step. Every hook receives ``context`` (a :class:`plugins.context.CdpContext`: the project and its
settings); implementations may accept any subset of a hook's arguments (pluggy's rule), so a plugin that needs no
context leaves it out. Plugins are registered by exposing a ``cdp`` entry point that points at the module holding
them.

Hooks return descriptors (``plugins.descriptors``) that name their implementation by import path: a plugin's module
and its hooks must stay cheap, because ``cdp --help`` and ``cdp plugins list`` import every plugin's module and every
command that needs a plugin of one kind calls that hook on all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from plugins.context import CdpContext
    from plugins.descriptors import (
        ActivatorDescriptor,
        AlertSink,
        CommandGroup,
        LoaderDescriptor,
        SourceDescriptor,
        TargetDescriptor,
        TransformDescriptor,
    )

PROJECT_NAME = "cdp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cdp_sources(context: CdpContext) -> list[SourceDescriptor]:
    """Return the data sources this plugin provides: name, Singer tap, streams, sandbox, webhook handler."""


@hookspec
def cdp_targets(context: CdpContext) -> list[TargetDescriptor]:
    """Return the Singer targets this plugin provides (where extracted records land)."""


@hookspec
def cdp_transforms(context: CdpContext) -> list[TransformDescriptor]:
    """Return the transforms this plugin provides: inputs (raw subjects or tables), output table, key, function."""


@hookspec
def cdp_loaders(context: CdpContext) -> list[LoaderDescriptor]:
    """Return the loaders this plugin provides: serving stores kept in step with the processed tables."""


@hookspec
def cdp_activators(context: CdpContext) -> list[ActivatorDescriptor]:
    """Return the activation destinations this plugin provides (email, ad audiences): sender, limits, sandbox."""


@hookspec
def cdp_alert_sinks(context: CdpContext) -> list[AlertSink]:
    """Return alert sinks that receive operational alerts (schema drift, DLQ volume, extraction failures)."""


@hookspec
def cdp_commands(context: CdpContext) -> list[CommandGroup]:
    """Return command groups the plugin adds to the ``cdp`` CLI (e.g. ``cdp acme ...``), as typer apps."""
