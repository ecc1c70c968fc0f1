"""``cdp sandbox``: serve a provider's local API emulator for development, tests and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from plugins.cli.output import console
from plugins.connectors.sandbox import FaultPlan, FaultPlanError, SandboxOptions, ThrowawayCertificate, serve_forever
from plugins.core.errors import CdpError
from plugins.manager import get_source, sources

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
    """Serve PROVIDER's sandbox API until interrupted."""
    source = get_source(provider)
    if source.sandbox is None:
        with_sandbox = sorted(name for name, s in sources().items() if s.sandbox is not None)
        raise CdpError(f"source '{provider}' has no sandbox (sources with one: {', '.join(with_sandbox)})")
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
    options = SandboxOptions(records=records, seed=seed, faults=faults, credentials=credentials)
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
