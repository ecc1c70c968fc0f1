"""The durable webhook log: what the receiver appends before it acknowledges, and what tap-webhooks drains.

Two backends behind one interface, chosen by URL: a local folder of append-only segment files (``file://...`` or a
plain path; one receiver per folder) and a PostgreSQL table (``postgresql://...``; several receivers behind a load
balancer). Positions are opaque strings that sort in log order and name their log (so a bookmark from a recreated
log is refused instead of silently skipping its events); a consumer (one tenant, provider and
stream of tap-webhooks) commits the position the target confirmed, and compaction removes only what every consumer of
that data has committed past.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from plugins.core.errors import CdpError, ConfigError
from plugins.core.serialization import MAX_RECORD_DEPTH, json_depth

LOG_URL_ENV_VAR = "CDP_WEBHOOK_LOG_URL"
DEFAULT_LOG_URL = "data/webhooks"


# Bounds of every duration histogram the receiver exports (seconds); Prometheus's "le": a bucket counts values <= it.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class DurationHistogram:
    """Durations counted per bucket of :data:`DURATION_BUCKETS` (the last count is +Inf), and their sum.

    Plain numbers: updated from one thread (the event loop, or the log's writer), read when /metrics is scraped.
    """

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them."""
        bounds = [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]  # As prometheus_client writes "le".
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


class BookmarkError(CdpError):
    """A consumer's bookmark does not fit this log: it is from another (recreated) log or past its end."""


@dataclass(frozen=True)
class LogEntry:
    """One verified, mapped event as the log stores it. ``received_at`` is ISO-8601 UTC."""

    tenant: str
    provider: str
    stream: str
    event_id: str
    topic: str
    received_at: str
    payload: dict[str, Any]
    # The payload's JSON text as the provider sent it, stored instead of re-encoding ``payload`` (which could change
    # a value, e.g. an integer beyond 64 bits); None for entries read back or built without one.
    payload_json: bytes | None = field(default=None, compare=False, repr=False)


# Deepest payload the log stores: orjson (which writes and reads every record) refuses to encode deeper values, and
# no provider's event comes near it (Stripe's nest under ten levels).
# What is stored must also pass target-s3raw when drained (its records are at most MAX_RECORD_DEPTH deep).
MAX_PAYLOAD_DEPTH = MAX_RECORD_DEPTH


def unstorable_reason(entry: LogEntry) -> str | None:
    """Why the log cannot store ``entry`` (so it must go to the DLQ instead), or None when it can.

    Checked before an event joins a group commit: one event that fails to encode must not fail its whole group.
    The same rules hold for every backend, so where an event lands never depends on the log's backend.
    """
    try:
        # Wrapped in one more level: orjson encodes 254 levels, and a record must leave room for its dead letter.
        encoded = orjson.dumps([entry.payload])[1:-1]
    except orjson.JSONEncodeError as exc:
        # The exact parser keeps what a float64 cannot hold (integers beyond 64 bits, decimals with 16+ digits) as
        # int or Decimal, which orjson will not encode: the provider's own text is stored instead, as sent.
        exact_number = "Integer exceeds" in str(exc) or "decimal.Decimal" in str(exc)
        if not exact_number or entry.payload_json is None:  # Too deep, or nothing exact to store.
            return f"the event cannot be stored: {exc} (deepest storable nesting: {MAX_PAYLOAD_DEPTH} levels)"
        if json_depth(entry.payload) > MAX_PAYLOAD_DEPTH:
            return f"the event is nested deeper than {MAX_PAYLOAD_DEPTH} levels and cannot be stored"
        encoded = entry.payload_json
    if b"\\u0000" in (entry.payload_json or encoded):
        return "the event holds a \\u0000 character, which the PostgreSQL log (jsonb) cannot store"
    return None


@dataclass(frozen=True)
class StoredEntry:
    """An entry read back from the log, with its position."""

    position: str
    entry: LogEntry


@dataclass(frozen=True)
class CompactionResult:
    """What a compaction removed and kept."""

    removed_units: int
    removed_entries: int
    kept_units: int
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed_units": self.removed_units,
            "removed_entries": self.removed_entries,
            "kept_units": self.kept_units,
            "details": self.details,
        }


def consumer_name(tenant: str, provider: str, stream: str) -> str:
    """The name a consumer commits its position under: ``tenant/provider/stream``."""
    return f"{tenant}/{provider}/{stream}"


class WebhookLog(Protocol):
    """The durable log. ``append`` is awaited by the receiver; everything else is synchronous."""

    url: str

    def start_writer(self) -> None:
        """Prepare to append (recover a torn tail, start the group-commit thread)."""

    async def append(self, entries: Sequence[LogEntry]) -> list[bool]:
        """Durably store ``entries``; one flag each: True stored, False a duplicate (already in the log)."""

    def append_sync(self, entries: Sequence[LogEntry]) -> list[bool]:
        """``append`` outside an event loop."""

    @property
    def queue_depth(self) -> int:
        """Append requests waiting for the next group commit."""

    @property
    def failed(self) -> BaseException | None:
        """Why the log stopped acknowledging appends until a restart (a failed sync), or None while it is healthy."""

    def read(self, tenant: str, provider: str, stream: str, after: str | None = None) -> Iterator[StoredEntry]:
        """Entries of one stream after position ``after`` (from the start if None), in log order."""

    def check_bookmark(self, position: str | None) -> None:
        """Raise BookmarkError when ``position`` is from another log (logs have an identity) or past this log's end."""

    def commit(self, consumer: str, position: str) -> None:
        """Record that ``consumer`` has durably processed everything up to and including ``position``."""

    def consumers(self) -> dict[str, str]:
        """Every consumer's committed position."""

    def compact(self) -> CompactionResult:
        """Remove what every consumer of it has committed past."""

    def close(self) -> None:
        """Flush pending appends and release resources."""

    def histograms(self) -> dict[str, DurationHistogram]:
        """The log's own durations for /metrics (``sync``: a group's wait for its fdatasync; ``roll``: the loop's time
        sealing a segment and starting the next); empty when the backend keeps none."""


def resolve_log_url(explicit: str | None = None) -> str:
    """The log URL: ``explicit``, else ``CDP_WEBHOOK_LOG_URL``, else ``data/webhooks``."""
    return explicit or os.environ.get(LOG_URL_ENV_VAR) or DEFAULT_LOG_URL


def open_log(url: str | None = None, *, setting: str = "log_url") -> WebhookLog:
    """The backend for ``url`` (resolved as ``resolve_log_url`` does)."""
    resolved = resolve_log_url(url)
    if resolved.startswith(("postgresql://", "postgres://")):
        from plugins.webhooks.postgres_log import PostgresWebhookLog

        return PostgresWebhookLog(resolved)
    if "://" in resolved and not resolved.startswith("file://"):
        raise ConfigError(setting, f"'{resolved}' is neither a folder, a file:// URL nor a postgresql:// URL")
    from plugins.webhooks.file_log import FileWebhookLog

    return FileWebhookLog(resolved.removeprefix("file://"))
