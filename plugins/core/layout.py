"""Object keys of the raw zone and the dead letter queue, shared by every writer and reader.

Raw:  ``{tenant}/{provider}/year=YYYY/month=MM/day=DD/{stream}_{UTC timestamp}_{unique}.ndjson.gz``
DLQ:  ``{tenant}/{provider}/{error_type}/year=YYYY/month=MM/day=DD/{stream}_{UTC timestamp}_{unique}.ndjson.gz``

The date is when the batch landed (UTC), so a day's partition only ever grows. Hive-style ``key=value`` folders let
Spark and every query engine prune by date.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from plugins.core.errors import ConfigError

BATCH_SUFFIX = ".ndjson.gz"
# Tenant and provider names; also the settings' JSON Schema pattern. ``(?!\n)$``: Python's ``$`` (which jsonschema
# uses for ``pattern``) also matches before a final newline, so "acme\n" would pass a plain ``...$``.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*(?!\n)$"
_NAME_RE = re.compile(NAME_PATTERN)
_UNSAFE_RE = re.compile(r"[^a-z0-9_]+")
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_PARTITION_RE = re.compile(r"year=(\d{4})/month=(\d{2})/day=(\d{2})/")
_FILE_RE = re.compile(r"^(?P<stream>[a-z0-9_]+)_(?P<ts>\d{8}T\d{12}Z)_(?P<unique>[0-9a-f]+)\.ndjson\.gz$")


def sanitize_stream_name(stream: str) -> str:
    """A stream name reduced to ``[a-z0-9_]``: lower case, every other run of characters becomes one underscore."""
    cleaned = _UNSAFE_RE.sub("_", stream.lower()).strip("_")
    return cleaned or "stream"


def validate_name(setting: str, value: str) -> str:
    """A tenant or provider name: lower-case letters, digits, ``_`` and ``-``, starting with a letter or digit."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(setting, f"'{value}' must be lower-case letters, digits, '_' or '-' (e.g. 'acme')")
    return value


def date_partition(when: datetime) -> str:
    """``year=YYYY/month=MM/day=DD`` for an instant, in UTC."""
    when = when.astimezone(UTC)
    return f"year={when:%Y}/month={when:%m}/day={when:%d}"


def batch_file_name(stream: str, when: datetime, unique: str | None = None) -> str:
    """``{stream}_{UTC timestamp}_{unique}.ndjson.gz``: sortable by time within a partition, never colliding.

    ``unique`` (lower-case hex) replaces the random part when a writer needs a deterministic key, e.g. to make a
    retried write land on the same object.
    """
    stamp = when.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)
    return f"{sanitize_stream_name(stream)}_{stamp}_{unique or uuid.uuid4().hex[:16]}{BATCH_SUFFIX}"


def raw_batch_key(
    tenant: str, provider: str, stream: str, when: datetime | None = None, unique: str | None = None
) -> str:
    """The raw-zone key of a new batch of ``stream`` landing at ``when`` (now by default)."""
    when = when or datetime.now(UTC)
    return f"{tenant}/{provider}/{date_partition(when)}/{batch_file_name(stream, when, unique)}"


def dlq_batch_key(
    tenant: str, provider: str, error_type: str, stream: str, when: datetime | None = None, unique: str | None = None
) -> str:
    """The DLQ key of a new batch of ``stream`` records that failed with ``error_type``."""
    when = when or datetime.now(UTC)
    return f"{tenant}/{provider}/{error_type}/{date_partition(when)}/{batch_file_name(stream, when, unique)}"


@dataclass(frozen=True)
class BatchKey:
    """The parts of a raw or DLQ batch key."""

    tenant: str
    provider: str
    error_type: str | None
    stream: str
    landed_at: datetime


def parse_batch_key(key: str) -> BatchKey:
    """Split a raw or DLQ batch key into its parts; raises ValueError for a key outside the layout."""
    match = _PARTITION_RE.search(key)
    parts = key.split("/")
    file_match = _FILE_RE.fullmatch(parts[-1])
    if match is None or file_match is None or len(parts) not in (6, 7):
        raise ValueError(f"'{key}' is not a batch key of the raw or DLQ layout")
    landed_at = datetime.strptime(file_match["ts"], _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    return BatchKey(
        tenant=parts[0],
        provider=parts[1],
        error_type=parts[2] if len(parts) == 7 else None,
        stream=file_match["stream"],
        landed_at=landed_at,
    )
