"""The one plugin manager: loads every plugin registered under the ``cdp`` entry-point group."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from plugins import hookspecs
from plugins.core.errors import CdpError
from plugins.descriptors import AlertSink, CommandGroup, DestinationDescriptor, SourceDescriptor

ENTRY_POINT_GROUP = "cdp"
PLUGINS_ENV_VAR = "CDP_PLUGINS"

HOOK_KINDS = {
    "cdp_sources": "source",
    "cdp_destinations": "destination",
    "cdp_transforms": "transform",
    "cdp_loaders": "loader",
    "cdp_alert_sinks": "alert-sink",
    "cdp_commands": "cli",
}


class UnknownPluginError(CdpError, LookupError):
    """A plugin, source or destination was asked for by a name nothing registered."""


class PluginLoadError(CdpError):
    """A registered plugin failed to import or register."""


def _enabled_names() -> list[str] | None:
    raw = os.environ.get(PLUGINS_ENV_VAR, "").strip()
    if not raw:
        return None
    return [name.strip() for name in raw.split(",") if name.strip()]


def create_plugin_manager(only: Iterable[str] | None = None) -> pluggy.PluginManager:
    """Build a plugin manager with every ``cdp`` entry point loaded (or only those named in ``only``/CDP_PLUGINS)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    available = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names = list(only) if only is not None else _enabled_names()
    for name in names if names is not None else sorted(available):
        if name not in available:
            msg = f"{PLUGINS_ENV_VAR} names '{name}', but no '{ENTRY_POINT_GROUP}' entry point has that name"
            raise UnknownPluginError(msg)
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:
            msg = (
                f"plugin '{name}' ({available[name]}) failed to load: {type(exc).__name__}: {exc}; "
                f"fix or uninstall it, or leave it out with {PLUGINS_ENV_VAR}"
            )
            raise PluginLoadError(msg) from exc
    pm.check_pending()
    return pm


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    return create_plugin_manager()


def _flatten(results: list[list[Any]]) -> list[Any]:
    return [item for result in results for item in (result or [])]


def sources(pm: pluggy.PluginManager | None = None) -> dict[str, SourceDescriptor]:
    """Every registered source, by name."""
    pm = pm or plugin_manager()
    return {source.name: source for source in _flatten(pm.hook.cdp_sources())}


def get_source(name: str, pm: pluggy.PluginManager | None = None) -> SourceDescriptor:
    """The source called ``name``, or an error listing the ones that exist."""
    known = sources(pm)
    if name not in known:
        msg = f"no source plugin named '{name}' (known: {', '.join(sorted(known)) or 'none'})"
        raise UnknownPluginError(msg)
    return known[name]


def destinations(pm: pluggy.PluginManager | None = None) -> dict[str, DestinationDescriptor]:
    """Every registered destination, by name."""
    pm = pm or plugin_manager()
    return {dest.name: dest for dest in _flatten(pm.hook.cdp_destinations())}


def command_groups(pm: pluggy.PluginManager | None = None) -> dict[str, CommandGroup]:
    """Every CLI command group plugins contribute, by name."""
    pm = pm or plugin_manager()
    return {group.name: group for group in _flatten(pm.hook.cdp_commands())}


def alert_sinks(pm: pluggy.PluginManager | None = None) -> list[AlertSink]:
    """Every registered alert sink."""
    pm = pm or plugin_manager()
    return list(_flatten(pm.hook.cdp_alert_sinks()))


@dataclass(frozen=True)
class PluginInfo:
    """What ``cdp plugins list`` shows for one plugin."""

    name: str
    kinds: list[str]
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kinds": self.kinds,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
        }


def describe_plugins(pm: pluggy.PluginManager | None = None) -> list[PluginInfo]:
    """Every loaded plugin with the hooks it implements, sorted by name."""
    pm = pm or plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        infos.append(
            PluginInfo(
                name=name,
                kinds=[HOOK_KINDS[hook] for hook in hooks if hook in HOOK_KINDS],
                module=getattr(plugin, "__name__", type(plugin).__name__),
                distribution=dist.metadata["name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
                hooks=hooks,
            )
        )
    return sorted(infos, key=lambda info: info.name)
