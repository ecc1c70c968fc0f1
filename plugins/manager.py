"""The one plugin manager: loads every plugin registered under the ``cdp`` entry-point group."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from plugins import hookspecs
from plugins.context import CdpContext
from plugins.core.errors import CdpError
from plugins.descriptors import (
    ActivatorDescriptor,
    AlertSink,
    CommandGroup,
    LoaderDescriptor,
    PluginLoadError,
    SourceDescriptor,
    TargetDescriptor,
    TransformDescriptor,
    order_transforms,
)

ENTRY_POINT_GROUP = "cdp"
PLUGINS_ENV_VAR = "CDP_PLUGINS"

HOOK_KINDS = {
    "cdp_sources": "source",
    "cdp_targets": "target",
    "cdp_transforms": "transform",
    "cdp_loaders": "loader",
    "cdp_activators": "activator",
    "cdp_alert_sinks": "alert-sink",
    "cdp_commands": "cli",
}

__all__ = ["PluginHookError", "PluginLoadError", "UnknownPluginError", "create_plugin_manager", "plugin_manager"]


class UnknownPluginError(CdpError, LookupError):
    """A plugin, source, target, transform, loader or activator was asked for by a name nothing registered."""


class PluginHookError(CdpError):
    """A plugin's hook implementation raised: the message names the plugin and the hook."""


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
            problem = " ".join(str(exc).split())  # pluggy's messages span lines; errors are one line
            msg = (
                f"plugin '{name}' ({available[name]}) failed to load: {type(exc).__name__}: {problem}; "
                f"fix or uninstall it, or leave it out with {PLUGINS_ENV_VAR}"
            )
            raise PluginLoadError(msg) from exc
    _refuse_unknown_hooks(pm, available)
    return pm


# Hooks that were renamed, so a plugin written for the old name is told the new one.
RENAMED_HOOKS = {"cdp_destinations": "cdp_targets"}


def _refuse_unknown_hooks(pm: pluggy.PluginManager, available: dict[str, str]) -> None:
    """pluggy's ``check_pending``, with the one-line error naming the plugin, its module and the real hooks."""
    for hook_name, caller in sorted(vars(pm.hook).items()):
        if hook_name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            renamed = f" (it is {RENAMED_HOOKS[hook_name]} now)" if hook_name in RENAMED_HOOKS else ""
            msg = (
                f"plugin '{impl.plugin_name}' ({available.get(impl.plugin_name, impl.plugin_name)}) implements "
                f"'{hook_name}', which is no cdp hook{renamed}; the hooks: {', '.join(sorted(HOOK_KINDS))}"
            )
            raise PluginLoadError(msg)


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    return create_plugin_manager()


def _context(context: CdpContext | None) -> CdpContext:
    return context if context is not None else CdpContext.discover()


def _collect(hook_name: str, pm: pluggy.PluginManager | None, context: CdpContext | None, expected: type) -> list[Any]:
    """Every item the plugins return from one hook, in registration order; each must be an ``expected``."""
    pm = pm or plugin_manager()
    hook = getattr(pm.hook, hook_name)
    resolved = _context(context)
    try:
        results = hook(context=resolved)
    except Exception as exc:
        # pluggy does not say whose implementation raised: find its frame in the traceback.
        raised_in = {frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)}
        culprit = next((impl.plugin_name for impl in hook.get_hookimpls() if impl.function.__code__ in raised_in), None)
        if culprit is None:
            raise
        msg = f"plugin '{culprit}' failed in {hook_name}: {type(exc).__name__}: {exc}; fix or uninstall it"
        raise PluginHookError(msg) from exc
    if all(isinstance(result, list | tuple) and all(isinstance(i, expected) for i in result) for result in results):
        return [item for result in results for item in result]
    raise PluginHookError(_wrong_return(hook, resolved, expected))


def _wrong_return(hook: Any, context: CdpContext, expected: type) -> str:
    """The one-line error for a hook implementation that returned something other than a list of ``expected``.

    Only on this error path is each implementation called again, alone, to find which plugin it was.
    """
    for impl in hook.get_hookimpls():
        arguments = {"context": context} if "context" in impl.argnames else {}
        result = impl.function(**arguments)
        if result is None:
            continue
        if not isinstance(result, list | tuple):
            got = f"a {type(result).__name__}"
        elif bad := next((item for item in result if not isinstance(item, expected)), None):
            got = f"a list holding a {type(bad).__name__}"
        else:
            continue
        return (
            f"plugin '{impl.plugin_name}' returned {got} from {hook.name}, which must return a list of "
            f"{expected.__name__}; fix or uninstall it"
        )
    return f"a plugin returned something other than a list of {expected.__name__} from {hook.name}"


def _by_name(kind: str, items: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        if item.name in found:
            raise PluginLoadError(f"two plugins register a {kind} named '{item.name}'; uninstall one")
        found[item.name] = item
    return found


def _get(kind: str, known: dict[str, Any], name: str) -> Any:
    if name not in known:
        msg = f"no {kind} plugin named '{name}' (known: {', '.join(sorted(known)) or 'none'})"
        raise UnknownPluginError(msg)
    return known[name]


def sources(pm: pluggy.PluginManager | None = None, context: CdpContext | None = None) -> dict[str, SourceDescriptor]:
    """Every registered source, by name."""
    return _by_name("source", _collect("cdp_sources", pm, context, SourceDescriptor))


def get_source(
    name: str, pm: pluggy.PluginManager | None = None, context: CdpContext | None = None
) -> SourceDescriptor:
    """The source called ``name``, or an error listing the ones that exist."""
    source: SourceDescriptor = _get("source", sources(pm, context), name)
    return source


def targets(pm: pluggy.PluginManager | None = None, context: CdpContext | None = None) -> dict[str, TargetDescriptor]:
    """Every registered Singer target, by name."""
    return _by_name("target", _collect("cdp_targets", pm, context, TargetDescriptor))


def transforms(pm: pluggy.PluginManager | None = None, context: CdpContext | None = None) -> list[TransformDescriptor]:
    """Every registered transform, in the order they must run (each after the producers of the tables it reads)."""
    registered = _by_name("transform", _collect("cdp_transforms", pm, context, TransformDescriptor))
    return order_transforms(registered.values())


def loaders(pm: pluggy.PluginManager | None = None, context: CdpContext | None = None) -> dict[str, LoaderDescriptor]:
    """Every registered loader (kind of serving store), by name."""
    return _by_name("loader", _collect("cdp_loaders", pm, context, LoaderDescriptor))


def activators(
    pm: pluggy.PluginManager | None = None, context: CdpContext | None = None
) -> dict[str, ActivatorDescriptor]:
    """Every registered activation destination, by name."""
    return _by_name("activation destination", _collect("cdp_activators", pm, context, ActivatorDescriptor))


def command_groups(
    pm: pluggy.PluginManager | None = None, context: CdpContext | None = None
) -> dict[str, CommandGroup]:
    """Every CLI command group plugins contribute, by name."""
    return _by_name("command group", _collect("cdp_commands", pm, context, CommandGroup))


def alert_sinks(pm: pluggy.PluginManager | None = None, context: CdpContext | None = None) -> list[AlertSink]:
    """Every registered alert sink."""
    return list(_collect("cdp_alert_sinks", pm, context, AlertSink))


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
