"""``cdp sandbox``: serve a provider's local API emulator for development, tests and the demo."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
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
    port: Annotated[
        int | None,
        typer.Option(
            help="Port to listen on; 0 picks a free one (the URL printed has it) "
            "[default: the source's dev port: stripe 12111, ...]."
        ),
    ] = None,
    records: Annotated[int, typer.Option(help="How many synthetic records per resource.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data (same seed, same data).")] = 42,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject a fault, KEY=VALUE (repeatable; VALUE is JSON or a string), e.g. rate_limit_every=5. "
            "Each sandbox's module docstring lists its faults."
        ),
    ] = None,
    credential: Annotated[
        list[str] | None,
        typer.Option(help="Credential the sandbox accepts, KEY=VALUE (repeatable), e.g. api_key=sk_test_123."),
    ] = None,
) -> None:
    """Serve PROVIDER's sandbox API until interrupted."""
    source = get_source(provider)
    if source.sandbox is None:
        with_sandbox = sorted(name for name, s in sources().items() if s.sandbox is not None)
        raise CdpError(f"source '{provider}' has no sandbox (sources with one: {', '.join(with_sandbox)})")
    options = SandboxOptions(
        records=records,
        seed=seed,
        faults=_key_values("--fault", fault or []),
        credentials={key: str(value) for key, value in _key_values("--credential", credential or []).items()},
    )
    app_ = source.sandbox(options)
    described = f"({records} records per resource, seed {seed})"
    serve_forever(
        app_,
        host,
        source.sandbox_port if port is None else port,
        announce=lambda url: console.print(f"{provider} sandbox on {url} {described}", highlight=False, soft_wrap=True),
    )


def _key_values(option: str, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a VALUE that parses as JSON (5, 0.5, ["a"], {"after": 3}) is taken as such."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint=option)
        try:
            parsed[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed[key] = raw
    return parsed
