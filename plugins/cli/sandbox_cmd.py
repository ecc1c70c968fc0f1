"""``cdp sandbox``: serve a provider's local API emulator for development, tests and the demo."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from plugins.cli.output import console, print_json
from plugins.connectors.sandbox import (
    FaultPlan,
    FaultPlanError,
    SandboxOptions,
    ThrowawayCertificate,
    _exit_on_signal,
    serve_forever,
)
from plugins.core.errors import CdpError
from plugins.descriptors import ActivatorDescriptor
from plugins.manager import UnknownPluginError, activators, get_source, sources

app = typer.Typer(help="Local emulators of the providers' APIs.", no_args_is_help=True)


@app.command("serve")
def serve(
    provider: Annotated[str, typer.Argument(help="Source name, e.g. stripe.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port to listen on; 0 picks a free one (the URL printed has it) "
            "[default: the source's dev port: stripe 12111, ...].",
        ),
    ] = None,
    records: Annotated[int, typer.Option(help="How many synthetic records per resource.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data (same seed, same data).")] = 42,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject a fault, NAME=VALUE (repeatable), e.g. rate_limit_every=5 or failing=/v1/charges. "
            "The names are plugins.connectors.sandbox.FaultPlan's (docs/taps.md); each sandbox lists those it offers."
        ),
    ] = None,
    credential: Annotated[
        list[str] | None,
        typer.Option(help="Credential the sandbox accepts, KEY=VALUE (repeatable), e.g. api_key=sk_test_123."),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Serve HTTPS with a throwaway certificate; clients trust the CA file it prints "
            "(e.g. REQUESTS_CA_BUNDLE=...). Needs the dev extra (trustme).",
        ),
    ] = False,
) -> None:
    """Serve PROVIDER's sandbox API (a source's or an activation destination's) until interrupted."""
    destination = next((d for name, d in activators().items() if provider in (name, d.sandbox_alias)), None)
    if destination is not None and provider not in sources():
        _serve_destination(destination, host, port, _options(records, seed, fault, credential), tls)
        return
    try:
        source = get_source(provider)
    except UnknownPluginError as exc:
        raise UnknownPluginError(
            f"{exc}; activation destinations: {', '.join(sorted(activators())) or 'none'}"
        ) from None
    if source.sandbox is None:
        with_sandbox = sorted(name for name, s in sources().items() if s.sandbox is not None)
        raise CdpError(f"source '{provider}' has no sandbox (sources with one: {', '.join(with_sandbox)})")
    options = _options(records, seed, fault, credential)
    app_ = source.load_sandbox()(options)
    certificate = ThrowawayCertificate.create(host, "localhost") if tls else None
    described = f"({records} records per resource, seed {seed})"

    def announce(url: str) -> None:
        console.print(f"{provider} sandbox on {url} {described}", highlight=False, soft_wrap=True)
        if certificate is not None:
            ca_file = certificate.ca_file
            console.print(f"CA certificate: {ca_file} (REQUESTS_CA_BUNDLE={ca_file})", highlight=False, soft_wrap=True)

    serve_forever(
        app_,
        host,
        source.sandbox_port if port is None else port,
        announce=announce,
        certificate=certificate,
    )


def _options(records: int, seed: int, fault: list[str] | None, credential: list[str] | None) -> SandboxOptions:
    try:
        faults = FaultPlan.parse(fault or [])
    except FaultPlanError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from None
    credentials = {}
    for pair in credential or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--credential")
        credentials[key] = value
    return SandboxOptions(records=records, seed=seed, faults=faults, credentials=credentials)


def _serve_destination(
    destination: ActivatorDescriptor, host: str, port: int | None, options: SandboxOptions, tls: bool
) -> None:
    """An activation destination's sandbox: an ASGI app (``sandbox``) served like a source's, or its own server
    (``sandbox_server``, e.g. SMTP: a context manager yielding its URL) kept up until interrupted."""
    if destination.sandbox is None and destination.sandbox_server is None:
        with_sandbox = sorted(n for n, d in activators().items() if d.sandbox or d.sandbox_server)
        known = ", ".join(with_sandbox) or "none"
        raise CdpError(f"activation destination '{destination.name}' has no sandbox (with one: {known})")
    try:
        factory = destination.load_sandbox()
        chosen_port = destination.sandbox_port if port is None else port

        def announce(url: str) -> None:
            console.print(f"{destination.name} sandbox on {url}", highlight=False, soft_wrap=True)

        if destination.sandbox is not None:
            certificate = ThrowawayCertificate.create(host, "localhost") if tls else None
            serve_forever(factory(options), host, chosen_port, announce=announce, certificate=certificate)
            return
        if tls:
            raise CdpError(f"the {destination.name} sandbox is not HTTP; --tls applies to HTTP sandboxes only")
        signal.signal(signal.SIGTERM, _exit_on_signal)
        with factory(options, host, chosen_port) as url:
            announce(str(url))
            threading.Event().wait()  # Until SIGINT or SIGTERM.
    except FaultPlanError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from None


@app.command("list")
def list_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The sandboxes ``cdp sandbox serve`` can start: sources' and activation destinations'."""
    rows = [
        {"name": name, "kind": "source", "port": s.sandbox_port}
        for name, s in sorted(sources().items())
        if s.sandbox is not None
    ] + [
        {"name": name, "kind": "activation destination", "port": d.sandbox_port, "alias": d.sandbox_alias}
        for name, d in sorted(activators().items())
        if d.sandbox is not None or d.sandbox_server is not None
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        alias = f" (also: {row['alias']})" if row.get("alias") else ""
        console.print(f"{row['name']:<20} {row['kind']:<24} port {row['port']}{alias}", highlight=False)
