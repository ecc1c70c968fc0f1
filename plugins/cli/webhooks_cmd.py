"""``cdp webhooks``: serve the webhook receiver, inspect and compact its durable log.

The receiver's modules are imported inside each command, so listing the command costs nothing.
"""

from __future__ import annotations

import gc
import socket
from typing import Annotated

import typer

from plugins.cli.options import DlqUrlOption, JsonOption
from plugins.cli.output import console, print_json
from plugins.core.errors import CdpError


class PortBusyError(CdpError):
    """The receiver's address cannot be bound (in use, or not this host's)."""


app = typer.Typer(help="The webhook receiver and its durable log.", no_args_is_help=True)

LogUrlOption = Annotated[
    str | None,
    typer.Option(
        "--log-url",
        help="Webhook log: a folder, file://... or postgresql://... [env CDP_WEBHOOK_LOG_URL; default data/webhooks]",
    ),
]


@app.command("serve")
def serve(
    log_url: LogUrlOption = None,
    dlq_url: DlqUrlOption = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one (the URL printed has it).")
    ] = 8080,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="CDP_WEBHOOK_MAX_BODY_BYTES", help="Largest body accepted (else 413).")
    ] = 1024 * 1024,
    rate: Annotated[
        float, typer.Option(envvar="CDP_WEBHOOK_RATE", help="Requests per second per tenant (0: no limit; else 429).")
    ] = 1000.0,
    burst: Annotated[int, typer.Option(envvar="CDP_WEBHOOK_BURST", help="Burst size of each tenant's bucket.")] = 2000,
    allow: Annotated[
        list[str] | None,
        typer.Option(help="PROVIDER=CIDR[,CIDR...]: only these sources may post for PROVIDER (else 403). Repeatable."),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(help="CIDR of a proxy whose X-Forwarded-For is trusted. Repeatable."),
    ] = None,
    compact_interval: Annotated[
        float, typer.Option(help="Seconds between automatic log compactions (0: never).")
    ] = 300.0,
    tenant: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CDP_WEBHOOK_TENANTS",
            help="Serve only this tenant (repeatable; default any tenant with a secret). Names that would share a "
            "secret variable (acme-x, acme_x) are refused.",
        ),
    ] = None,
    unverified_rate: Annotated[
        float,
        typer.Option(help="Failed signatures per second per source address (0: no limit; else 429)."),
    ] = 5.0,
    unverified_burst: Annotated[int, typer.Option(help="Burst of failed signatures per source address.")] = 50,
    max_header_bytes: Annotated[int, typer.Option(help="Largest request line and headers (else 431).")] = 32 * 1024,
    header_timeout: Annotated[float, typer.Option(help="Seconds to receive a request's headers (else 408).")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds to receive a request's body (else 408).")] = 10.0,
    max_connections: Annotated[int, typer.Option(help="Open connections; more are answered 503.")] = 1000,
) -> None:
    """Receive webhooks on POST /webhooks/{tenant}/{provider} until interrupted."""
    import uvicorn

    from plugins.connectors.sandbox import socket_url
    from plugins.webhooks.log import open_log, resolve_log_url
    from plugins.webhooks.receiver import (
        ReceiverSettings,
        WebhookReceiver,
        parse_allowlist,
        parse_networks,
        registered_handlers,
        registered_routes,
    )

    settings = ReceiverSettings(
        max_body_bytes=max_body_bytes,
        rate_per_second=rate,
        burst=burst,
        allow=parse_allowlist(allow or []),
        trusted_proxies=parse_networks("trusted_proxy", trusted_proxy or []),
        compact_interval_seconds=compact_interval,
        dlq_url=dlq_url,
        tenants=[name.strip() for value in tenant or [] for name in value.split(",") if name.strip()],
        unverified_rate_per_second=unverified_rate,
        unverified_burst=unverified_burst,
        max_header_bytes=max_header_bytes,
        header_timeout_seconds=header_timeout,
        body_timeout_seconds=body_timeout,
        max_connections=max_connections,
    )
    # The port first: a busy port must not leave a freshly made 32 MiB log behind. Then the log's writer, so a locked
    # log or a path that is a file fails here, in one line, instead of inside uvicorn's start-up.
    listener = bind(host, port)
    log = open_log(log_url)
    try:
        log.start_writer()
        receiver = WebhookReceiver(log, registered_handlers(), settings, registered_routes(settings))
    except BaseException:
        listener.close()
        log.close()
        raise
    config = uvicorn.Config(receiver.app(), log_level="warning", **receiver.uvicorn_options())
    url = socket_url(listener)  # the real port, also with --port 0
    console.print(f"webhook receiver on {url} (log {resolve_log_url(log_url)})", highlight=False, soft_wrap=True)
    tune_garbage_collection()  # Last thing before serving: everything built so far is start-up state.
    uvicorn.Server(config).run(sockets=[listener])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or PortBusyError in one line."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as exc:
        raise PortBusyError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(info[4])
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise PortBusyError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or stop what uses it"
        ) from exc
    listener.set_inheritable(True)
    return listener


@app.command("compact")
def compact(log_url: LogUrlOption = None, as_json: JsonOption = False) -> None:
    """Remove log segments (or rows) every consumer has committed past."""
    from plugins.webhooks.log import open_log

    log = open_log(log_url)
    result = log.compact()
    if as_json:
        print_json(result.as_dict())
        return
    console.print(
        f"removed {result.removed_units} unit(s) holding {result.removed_entries} event(s); kept {result.kept_units}"
    )


@app.command("consumers")
def consumers(log_url: LogUrlOption = None, as_json: JsonOption = False) -> None:
    """Each consumer (tenant/provider/stream of tap-webhooks) and the position its target confirmed.

    A position this log cannot have written (past its end, or from another log) is marked, and the exit status is 1:
    that consumer's next drain fails until its state is reset (docs/webhooks.md).
    """
    from plugins.webhooks.log import BookmarkError, open_log

    log = open_log(log_url)
    rows = []
    for name, position in sorted(log.consumers().items()):
        try:
            log.check_bookmark(position)
            problem = None
        except BookmarkError as exc:
            problem = str(exc)
        rows.append({"consumer": name, "position": position, "valid": problem is None, "problem": problem})
    if as_json:
        print_json({"consumers": rows})
    else:
        if not rows:
            console.print("no consumer has committed a position yet")
        for row in rows:
            mark = "" if row["valid"] else f"  invalid: {row['problem']}"
            console.print(f"{row['consumer']}  {row['position']}{mark}", highlight=False)
    if any(not row["valid"] for row in rows):
        raise typer.Exit(1)


# Young-generation threshold for the receiver process: collections every 50k allocations instead of 700.
GC_GEN0_THRESHOLD = 50_000


def tune_garbage_collection() -> None:
    """Keep full collections off the request path of this dedicated server process.

    Under load, CPython's collector traversed every object the receiver had built at start-up (plugins, the SDK,
    Starlette) many times a second; those pauses were the p99 (about 60 ms against 9-15 ms without them, measured
    with wrk, 32 connections). Freezing the start-up objects takes them out of every later collection, and a larger
    first threshold makes collections rarer; garbage is still collected.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
