"""The ``cdp`` command: exit 0 on success, 1 on failure, 2 on a usage error; errors are one line unless --debug."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from plugins.cli.output import print_error
from plugins.core.errors import CdpError

# The built-in command groups, imported only when one is run: `cdp --help` and `cdp plugins list` stay fast because
# no other group's modules (pyarrow, the DLQ tools, the registry) load. Each entry: import path, one-line help (the
# same as the group's own; tests/test_cli.py keeps them equal).
BUILT_IN_COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("plugins.cli.plugins_cmd:app", "Inspect the installed plugins."),
    "sandbox": ("plugins.cli.sandbox_cmd:app", "Local emulators of the providers' APIs."),
    "schema": (
        "plugins.cli.schema_cmd:app",
        "The schema registry: subjects tenant/provider/stream and their versions.",
    ),
    "dlq": ("plugins.cli.dlq_cmd:app", "The dead letter queue: list, show, stats, reprocess, resubmit, purge, audit."),
    "new": ("plugins.cli.new_cmd:app", "Scaffold new connectors."),
    "transform": (
        "plugins.cli.transform_cmd:app",
        "Transforms: the raw zone into Iceberg tables (run them, list them).",
    ),
    "tables": (
        "plugins.cli.tables_cmd:app",
        "The processed zone's Iceberg tables: list, show, history, rollback, compact, expire.",
    ),
    "webhooks": ("plugins.cli.webhooks_cmd:app", "The webhook receiver and its durable log."),
    "load": ("plugins.cli.load_cmd:app", "Load processed tables into the serving stores: run, status, rollback."),
    "demo": (
        "plugins.cli.demo_cmd:demo",
        "Sandboxes to served customers and campaign results: three providers through meltano run, the transforms, "
        "PostgreSQL and search, then a segment, campaigns to the destinations' sandboxes, feedback and metrics.",
    ),
}


def load_built_in(name: str) -> Any:
    """The click command of a built-in group (or single command), imported now."""
    path, _ = BUILT_IN_COMMANDS[name]
    module_name, _, attribute = path.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        command: Any = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommands(TyperGroup):
    """The root group: built-in groups load on use; help lists them from their one-line summaries."""

    _listing_help = False

    # Typer passes its own (vendored) click types; they are only handed through here, hence Any.
    def list_commands(self, ctx: Any) -> list[str]:
        return [*BUILT_IN_COMMANDS, *(name for name in super().list_commands(ctx) if name not in BUILT_IN_COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in BUILT_IN_COMMANDS:
            return super().get_command(ctx, cmd_name)
        if self._listing_help:  # the summary is enough to list it
            return TyperCommand(cmd_name, help=BUILT_IN_COMMANDS[cmd_name][1])
        return load_built_in(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing_help = False


app = typer.Typer(
    name="cdp",
    cls=LazyCommands,
    help="Customer data platform connectors: plugins, sandboxes, the raw zone and its tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def add_plugin_commands(args: list[str]) -> None:
    """Add the command groups plugins contribute (``cdp_commands``), unless ``args`` name a built-in command.

    A built-in command does not load the plugins at all; help and plugin commands load them (cheap: descriptors import
    their implementations only when used).
    """
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command in BUILT_IN_COMMANDS:
        return
    from plugins.manager import command_groups

    for name, group in sorted(command_groups().items()):
        if name in BUILT_IN_COMMANDS:  # A plugin may not shadow a built-in command: say so, and go on without it.
            from plugins.cli.output import err_console

            err_console.print(
                f"warning: a plugin's command group '{name}' is ignored: a built-in command has that name; "
                "rename the group (cdp plugins list shows which plugin adds commands)",
                highlight=False,
                soft_wrap=True,
            )
            continue
        app.add_typer(group.app, name=name, help=group.help or None)


_debug = False


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", envvar="CDP_DEBUG", help="Show tracebacks and debug logs.")] = False,
) -> None:
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the ``cdp`` console script)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("CDP_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        add_plugin_commands(args)
        # Standalone mode: typer prints usage errors and exits 2, and turns typer.Exit into SystemExit.
        app(args=args, prog_name="cdp")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print_error("aborted")
        return 1
    except CdpError as exc:
        if debug:
            traceback.print_exc()
        print_error(str(exc))
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print_error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
