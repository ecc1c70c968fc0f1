"""``cdp sandbox``: serve a provider's local API emulator for development, tests and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from plugins.cli.output import console
from plugins.descriptors import SandboxOptions
from plugins.errors import CdpError
from plugins.manager import get_source, sources
from plugins.sandbox import serve_forever

app = typer.Typer(help="Local emulators of the providers' APIs.", no_args_is_help=True)


@app.command("serve")
def serve(
    provider: Annotated[str, typer.Argument(help="Source name, e.g. stripe.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 12111,
    records: Annotated[int, typer.Option(help="How many synthetic records per resource.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data (same seed, same data).")] = 42,
) -> None:
    """Serve PROVIDER's sandbox API until interrupted."""
    source = get_source(provider)
    if source.sandbox is None:
        with_sandbox = sorted(name for name, s in sources().items() if s.sandbox is not None)
        raise CdpError(f"source '{provider}' has no sandbox (sources with one: {', '.join(with_sandbox)})")
    app_ = source.sandbox(SandboxOptions(records=records, seed=seed))
    console.print(f"{provider} sandbox on http://{host}:{port} ({records} records per resource, seed {seed})")
    serve_forever(app_, host, port)
