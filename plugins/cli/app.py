"""The ``cdp`` command: exit 0 on success, 1 on failure, 2 on a usage error; errors are one line unless --debug."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from plugins.cli import demo_cmd, dlq_cmd, new_cmd, plugins_cmd, sandbox_cmd, schema_cmd
from plugins.cli.output import print_error
from plugins.core.errors import CdpError

app = typer.Typer(
    name="cdp",
    help="Customer data platform connectors: plugins, sandboxes, the raw zone and its tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(sandbox_cmd.app, name="sandbox")
app.add_typer(schema_cmd.app, name="schema")
app.add_typer(dlq_cmd.app, name="dlq")
app.add_typer(new_cmd.app, name="new")
app.command("demo")(demo_cmd.demo)
BUILT_IN_COMMANDS = frozenset({"plugins", "sandbox", "schema", "dlq", "new", "demo"})


def add_plugin_commands(args: list[str]) -> None:
    """Add the command groups plugins contribute (``cdp_commands``), unless ``args`` name a built-in command.

    Loading every plugin takes a second or two, so a built-in command does not pay for it; help and plugin commands do.
    """
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command in BUILT_IN_COMMANDS:
        return
    from plugins.manager import command_groups

    for name, group in sorted(command_groups().items()):
        if name in BUILT_IN_COMMANDS:
            continue  # A plugin may not shadow a built-in command.
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
