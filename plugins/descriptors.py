"""What plugins hand to the framework through the hooks: small typed descriptions of what they provide.

Descriptors are cheap to build: they name their implementation as an import path (``"package.module:attribute"``)
and the framework imports it only when it runs (dlt's factories work the same way). Listing plugins, ``cdp --help``
and a tap run therefore import no other provider's sandbox, no Spark and no database driver.
"""

from __future__ import annotations

import enum
import graphlib
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

    import pyarrow as pa
    import typer
    from singer_sdk import Tap, Target
    from starlette.types import ASGIApp

    from plugins.connectors.sandbox import SandboxOptions
    from plugins.connectors.webhook_signing import WebhookHandler


class PluginLoadError(CdpError):
    """A registered plugin, or the implementation a descriptor names, failed to import."""


@cache
def load_object(path: str) -> Any:
    """The object an import path names: ``"package.module:attribute"`` (the attribute may be dotted).

    Imported once per process; a path that does not resolve is a PluginLoadError naming it.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginLoadError(f"'{path}' is not an import path like 'package.module:attribute'")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:
        raise PluginLoadError(f"cannot import '{path}': {type(exc).__name__}: {exc}") from exc
    return found


@dataclass(frozen=True)
class SourceDescriptor:
    """A data source: the Singer tap that extracts it and, optionally, its local sandbox and webhook handler.

    ``tap`` names the tap class; ``sandbox`` a factory ``(SandboxOptions) -> ASGI app`` that emulates the provider's
    API for tests and the demo (``cdp sandbox serve NAME``); ``webhook_handler`` a class (or factory) whose instance
    verifies and maps the provider's pushed events. All three are import paths, imported on first use.
    """

    name: str
    tap: str
    streams: Sequence[str]
    description: str = ""
    sandbox: str | None = None
    #: The port ``cdp sandbox serve NAME`` listens on by default (the one meltano.yml's dev environment points at).
    sandbox_port: int = 12111
    webhook_handler: str | None = None

    @property
    def executable(self) -> str:
        """The console script that runs the tap, as Meltano calls it."""
        return f"tap-{self.name}"

    def load_tap(self) -> type[Tap]:
        """The Singer tap class."""
        tap: type[Tap] = load_object(self.tap)
        return tap

    def load_sandbox(self) -> Callable[[SandboxOptions], ASGIApp]:
        """The sandbox factory; a CdpError when the source has none."""
        if self.sandbox is None:
            raise CdpError(f"source '{self.name}' has no sandbox")
        factory: Callable[[SandboxOptions], ASGIApp] = load_object(self.sandbox)
        return factory

    def load_webhook_handler(self) -> WebhookHandler:
        """The webhook handler (one instance per process); a CdpError when the source receives no webhooks."""
        if self.webhook_handler is None:
            raise CdpError(f"source '{self.name}' has no webhook handler")
        return _instance(self.webhook_handler)  # type: ignore[no-any-return]


@cache
def _instance(path: str) -> Any:
    return load_object(path)()


@dataclass(frozen=True)
class TargetDescriptor:
    """A Singer target that receives extracted records (``target`` names its class)."""

    name: str
    target: str
    description: str = ""

    @property
    def executable(self) -> str:
        """The console script that runs the target, as Meltano calls it."""
        return f"target-{self.name}"

    def load_target(self) -> type[Target]:
        """The Singer target class."""
        target: type[Target] = load_object(self.target)
        return target


@dataclass(frozen=True)
class CommandGroup:
    """A group of ``cdp`` subcommands a plugin contributes: ``cdp NAME ...`` runs ``app``."""

    name: str
    app: typer.Typer
    help: str = ""


# -- transforms ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawInput:
    """A transform input read from the raw zone: every batch of one subject, ``provider/stream``, per tenant."""

    provider: str
    stream: str
    # The keyword argument the transform function receives this input as; the stream's name by default. Set it when
    # two inputs share a stream name (Shopify's and Stripe's ``products``).
    argument: str = ""

    def __str__(self) -> str:
        return f"raw:{self.provider}/{self.stream}"

    @property
    def keyword(self) -> str:
        """The transform function's keyword argument for this input."""
        return self.argument or self.stream


@dataclass(frozen=True)
class TableInput:
    """A transform input read from another transform's output table in the same tenant's namespace."""

    table: str

    def __str__(self) -> str:
        return f"table:{self.table}"


TransformInput = RawInput | TableInput


@dataclass(frozen=True)
class ErasureKey:
    """A column of a transform's output that identifies a person: rows whose value has a tombstone are erased.

    The identifier's type is fixed (``id_type="email"``) or read per row from ``type_column`` (an output holding
    Stripe and Shopify customer ids side by side).
    """

    value_column: str
    id_type: str | None = None
    type_column: str | None = None


@dataclass(frozen=True)
class TransformDescriptor:
    """A transform: named inputs in, one keyed, partitioned table out.

    ``function`` names a callable taking the input DataFrames (keyword arguments named after the inputs: the stream,
    or its ``argument`` when set, for a raw input, the table for a table input) and returning the output DataFrame.
    The framework does the rest for every transform alike: reading, schemas, state, writing, commits, the quality
    report and the DLQ.
    ``partitioning`` holds Iceberg partition transforms, e.g. ``("bucket(16, customer_id)",)`` or
    ``("month(occurred_at)",)``.
    """

    name: str
    inputs: Sequence[TransformInput]
    output: str
    key: Sequence[str]
    function: str
    partitioning: Sequence[str] = ()
    description: str = ""
    # The output's columns that identify people: the framework drops the rows an erasure tombstone matches
    # (plugins.transforms.erasure.drop_erased), so reprocessing raw data never brings an erased person back.
    erasure_keys: Sequence[ErasureKey] = ()
    # Import path of the output's quality rules (a sequence of plugins.transforms.quality rules), loaded when the
    # transform runs: rows breaking one go to the DLQ as transform_rejected.
    quality_rules: str | None = None
    # Import path of a callable returning the Spark sort order (a list of Columns) that decides which version of a key
    # survives when the runner merges new rows into the table, the first winning. It must be the order the function
    # itself keeps the latest version by, so incremental runs equal a full refresh. Default: ``updated_at``
    # descending where the output has it, then the later raw file (``_cdp_source_file`` descending).
    merge_order: str | None = None

    def load_function(self) -> Callable[..., Any]:
        """The transform function."""
        function: Callable[..., Any] = load_object(self.function)
        return function

    def load_quality_rules(self) -> Sequence[Any]:
        """The output's quality rules (none when the descriptor names none)."""
        if self.quality_rules is None:
            return ()
        rules: Sequence[Any] = load_object(self.quality_rules)
        return rules

    def load_merge_order(self) -> Callable[[], Sequence[Any]] | None:
        """The callable giving the output's merge order (None: the runner's default)."""
        if self.merge_order is None:
            return None
        order: Callable[[], Sequence[Any]] = load_object(self.merge_order)
        return order


class TransformGraphError(CdpError):
    """Transforms whose inputs cannot be ordered: a missing producer, two producers of one table, or a cycle."""


def order_transforms(transforms: Iterable[TransformDescriptor]) -> list[TransformDescriptor]:
    """``transforms`` in an order where each runs after the transforms whose tables it reads (ties by name)."""
    by_name: dict[str, TransformDescriptor] = {}
    producers: dict[str, str] = {}
    for transform in transforms:
        if transform.output in producers:
            msg = f"transforms '{producers[transform.output]}' and '{transform.name}' both write '{transform.output}'"
            raise TransformGraphError(msg)
        producers[transform.output] = transform.name
        by_name[transform.name] = transform
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in sorted(by_name):
        needs = []
        for source in by_name[name].inputs:
            if isinstance(source, TableInput):
                if source.table not in producers:
                    raise TransformGraphError(
                        f"transform '{name}' reads table '{source.table}', which no transform writes"
                    )
                needs.append(producers[source.table])
        sorter.add(name, *needs)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise TransformGraphError(
            f"transforms read each other's tables in a cycle: {' -> '.join(exc.args[1])}"
        ) from exc
    ordered: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        ordered.extend(ready)
        sorter.done(*ready)
    return [by_name[name] for name in ordered]


# -- loaders ------------------------------------------------------------------------------------------------------


class LoadMode(StrEnum):
    """How a loader brings a store up to a table's snapshot."""

    INCREMENTAL = "incremental"  # Only what changed between the last loaded snapshot and this one.
    FULL_REFRESH = "full-refresh"  # Everything, swapped in atomically.


@runtime_checkable
class TableChanges(Protocol):
    """The rows a load needs, read from the table's data files as Arrow record batches, one data file at a time.

    Incremental: ``upserts()`` are the rows of the data files added since the snapshot loaded last (the loader skips
    the unchanged ones) and ``deleted_keys()`` the keys of the files removed that no added file holds any more.
    ``all_rows()`` is the whole snapshot, for a full refresh.
    """

    @property
    def key(self) -> Sequence[str]:
        """The table's key columns."""

    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema (every batch has it)."""

    @property
    def row_count(self) -> int:
        """Rows in the snapshot to load."""

    def upserts(self) -> Iterator[pa.RecordBatch]:
        """Rows to insert or update."""

    def deleted_keys(self) -> Iterator[pa.RecordBatch]:
        """Key columns of rows to delete."""

    def all_rows(self) -> Iterator[pa.RecordBatch]:
        """Every row of the snapshot."""


@dataclass(frozen=True)
class LoadRequest:
    """What the framework hands a loader: one table, the snapshot to load and the one it loaded last.

    ``changes`` reads the rows (None only for a loader called outside the framework, which reads them itself).
    """

    tenant: str
    table: str
    snapshot_id: int
    previous_snapshot_id: int | None
    mode: LoadMode
    settings: Mapping[str, Any] = field(default_factory=dict)
    changes: TableChanges | None = None


@dataclass(frozen=True)
class LoadResult:
    """What one load did."""

    table: str
    snapshot_id: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    seconds: float = 0.0


@runtime_checkable
class Loader(Protocol):
    """A serving store kept in step with processed tables. It records the snapshot it holds in the store itself."""

    def load(self, request: LoadRequest) -> LoadResult:
        """Bring ``request.table`` to ``request.snapshot_id``; return the counts."""

    def loaded_snapshot(self, tenant: str, table: str) -> int | None:
        """The snapshot the store holds for ``table``, or None if it was never loaded."""


@runtime_checkable
class RollbackLoader(Loader, Protocol):
    """A loader that keeps the table it replaced on a full refresh and can put it back (``cdp load rollback``)."""

    def rollback(self, tenant: str, table: str) -> int | None:
        """Put the previous table back; return the snapshot it holds (None: it holds no recorded snapshot)."""


@dataclass(frozen=True)
class LoaderDescriptor:
    """One kind of serving store (PostgreSQL, Elasticsearch, ...): ``loader`` names a factory of a ``Loader``.

    ``settings_schema`` is the JSON Schema of its settings (titles, descriptions, ``secret`` where it holds one).
    ``local_server`` names a context manager factory ``(data_dir: Path) -> ContextManager[str]`` that runs a local
    stand-in of the store (an embedded server, an API emulator) and yields its URL, as a source's sandbox stands in
    for its provider; ``url_env_var`` is the variable the loader reads that URL from. ``make demo`` uses both.
    """

    name: str
    loader: str
    description: str = ""
    settings_schema: Mapping[str, Any] = field(default_factory=dict)
    local_server: str | None = None
    url_env_var: str | None = None

    def load_loader(self) -> Callable[..., Loader]:
        """The loader's factory (a class, usually), called with the resolved settings."""
        factory: Callable[..., Loader] = load_object(self.loader)
        return factory

    def load_local_server(self) -> Callable[[Path], AbstractContextManager[str]]:
        """The factory of the store's local stand-in (``local_server``); an error if the loader has none."""
        if self.local_server is None:
            raise PluginLoadError(f"loader '{self.name}' has no local server to start; give its URL instead")
        factory: Callable[[Path], AbstractContextManager[str]] = load_object(self.local_server)
        return factory


# -- activation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelLimits:
    """A destination's documented limits: members per request and requests per second."""

    max_batch_size: int
    requests_per_second: float


class MemberOutcome(enum.Enum):
    """What a destination did with one audience member."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class MemberResult:
    """One member's result at a destination, with the reason when it was rejected.

    ``provider_reference`` is what the provider knows the send by (an email's ``Message-ID``, an upload session), kept
    in the send log.
    """

    member_id: str
    outcome: MemberOutcome
    reason: str = ""
    provider_reference: str = ""


@dataclass(frozen=True)
class RenderedContent:
    """A campaign's content rendered for one member (channels that carry content: email, SMS)."""

    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One member to add to (or remove from) a destination.

    ``columns`` is the member's row of the segment export (customer_id, email, phone, names, country, metrics...);
    ``idempotency_key`` (campaign, member, variant) is stable across re-runs: senders pass it on where the provider
    takes one. ``content`` is set for channels whose descriptor says ``content=True``.
    """

    member_id: str
    columns: Mapping[str, Any]
    idempotency_key: str
    variant: str = ""
    content: RenderedContent | None = None


class RetryableSendError(CdpError):
    """The provider refused a whole request for now (HTTP 429 or 5xx, an SMTP 4xx, a dropped connection): the
    framework backs off and retries the batch, waiting at least ``retry_after`` seconds when the provider said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SendError(CdpError):
    """The provider refused a whole request for good (bad credentials, an audience that does not exist): the
    framework stops the batch's members, records them as failed and dead-letters them as ``activation_failed``."""


@runtime_checkable
class Sender(Protocol):
    """Sends audience members to one activation destination. Created once per run with the resolved settings.

    Each call gets at most the channel's ``max_batch_size`` deliveries and returns one result per delivery (a member
    the provider rejected, e.g. an unparseable address, is REJECTED with the reason). A request the provider refused
    as a whole raises :class:`RetryableSendError` or :class:`SendError`. The framework does everything else: batching,
    the rate limit, retries, consent, the send log.
    """

    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        """Send to / add to the audience."""

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        """Take members out of the destination's audience (those who left the segment)."""

    def close(self) -> None:
        """Release connections (an SMTP session, an HTTP client)."""


@dataclass(frozen=True)
class ActivatorDescriptor:
    """An activation destination (email, Facebook Custom Audiences, Google audiences, ...).

    ``sender`` names a factory of a ``Sender``, called with the resolved settings (a mapping validated against
    ``settings_schema``). ``channel`` is the consent channel it sends on (``email``, ``sms`` or ``ads``): members who
    refused it, are suppressed or were erased are never sent. ``content`` says whether campaigns render content per
    member for it (email: yes; an ad audience: no). ``sandbox`` names a factory ``(SandboxOptions) -> ASGI app`` that
    emulates an HTTP provider; ``sandbox_server`` a factory ``(SandboxOptions, host, port) -> ContextManager[str]``
    for a provider that does not speak HTTP (SMTP), yielding its URL. ``cdp sandbox serve NAME`` serves either.
    ``receiver_routes`` names a factory of Starlette routes the webhook receiver serves beside the webhooks (email:
    ``/unsubscribe/{tenant}/{token}``), for what a channel's recipients call back.
    """

    name: str
    sender: str
    limits: ChannelLimits
    channel: str = "email"
    content: bool = False
    description: str = ""
    settings_schema: Mapping[str, Any] = field(default_factory=dict)
    sandbox: str | None = None
    sandbox_server: str | None = None
    sandbox_port: int = 0
    # The name ``cdp sandbox serve`` also knows the sandbox by, when it is the protocol's rather than the
    # destination's (``smtp`` for ``email``).
    sandbox_alias: str = ""
    receiver_routes: str | None = None

    def load_receiver_routes(self) -> Callable[..., Sequence[Any]] | None:
        """The factory of the endpoints this destination adds to the webhook receiver (``receiver_routes``: email's
        one-click unsubscribe), called as ``factory(environ, tenants)``; None when it adds none."""
        if self.receiver_routes is None:
            return None
        factory: Callable[..., Sequence[Any]] = load_object(self.receiver_routes)
        return factory

    def load_sender(self) -> Callable[..., Sender]:
        """The sender's factory."""
        factory: Callable[..., Sender] = load_object(self.sender)
        return factory

    def load_sandbox(self) -> Callable[..., Any]:
        """The sandbox factory (``sandbox``, else ``sandbox_server``); a CdpError when the destination has none."""
        path = self.sandbox or self.sandbox_server
        if path is None:
            raise CdpError(f"activation destination '{self.name}' has no sandbox")
        factory: Callable[..., Any] = load_object(path)
        return factory


# -- alerts -------------------------------------------------------------------------------------------------------


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
