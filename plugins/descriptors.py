"""What plugins hand to the framework through the hooks: small typed descriptions of what they provide."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from plugins.connectors.sandbox import FaultPlan

if TYPE_CHECKING:
    import typer
    from singer_sdk import Tap, Target
    from starlette.types import ASGIApp


@dataclass(frozen=True)
class SandboxOptions:
    """How a provider sandbox is built: how much synthetic data, from which seed, which credentials it accepts, and
    the faults it injects (:class:`plugins.connectors.sandbox.FaultPlan`, one vocabulary for every sandbox; each sandbox refuses
    the faults it does not offer)."""

    records: int = 1000
    seed: int = 42
    credentials: dict[str, str] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)


@dataclass(frozen=True)
class SourceDescriptor:
    """A data source: the Singer tap that extracts it and, optionally, its local sandbox and webhook handler.

    ``sandbox`` builds the ASGI app that emulates the provider's API for tests and the demo
    (``cdp sandbox serve NAME``). ``webhook_handler`` verifies and maps the provider's pushed events.
    """

    name: str
    tap_class: type[Tap]
    streams: Sequence[str]
    description: str = ""
    sandbox: Callable[[SandboxOptions], ASGIApp] | None = None
    #: The port ``cdp sandbox serve NAME`` listens on by default (the one meltano.yml's dev environment points at).
    sandbox_port: int = 12111
    webhook_handler: Any | None = None

    @property
    def executable(self) -> str:
        """The console script that runs the tap, as Meltano calls it."""
        return f"tap-{self.name}"


@dataclass(frozen=True)
class DestinationDescriptor:
    """A Singer target that receives extracted records."""

    name: str
    target_class: type[Target]
    description: str = ""

    @property
    def executable(self) -> str:
        """The console script that runs the target, as Meltano calls it."""
        return f"target-{self.name}"


@dataclass(frozen=True)
class CommandGroup:
    """A group of ``cdp`` subcommands a plugin contributes: ``cdp NAME ...`` runs ``app``."""

    name: str
    app: typer.Typer
    help: str = ""


@dataclass(frozen=True)
class TransformDescriptor:
    """A transform from the raw zone to curated data."""

    name: str
    run: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class LoaderDescriptor:
    """A loader from curated data into a serving store."""

    name: str
    run: Callable[..., Any]
    description: str = ""


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Alert:
    """One operational event worth a human's attention. Never carries record contents or secrets."""

    kind: str
    severity: Severity
    message: str
    tenant: str | None = None
    provider: str | None = None
    stream: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    raised_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@runtime_checkable
class AlertSink(Protocol):
    """Something that delivers alerts: a log, a chat webhook, a pager."""

    name: str

    def send(self, alert: Alert) -> None:
        """Deliver one alert. Must not raise for delivery failures; log them instead."""
