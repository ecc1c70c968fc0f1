"""Writes batches of records to the raw zone: gzip NDJSON in the shared layout, one atomic object per batch."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugins.core.layout import raw_batch_key, validate_name
from plugins.core.serialization import loads, ndjson
from plugins.core.storage import ObjectStore

# Metadata every raw record carries beside its own properties (Singer's ``_sdc_`` names where Singer has them).
METADATA_COLUMNS = ("_sdc_extracted_at", "_sdc_received_at", "_sdc_batched_at", "_sdc_sequence", "_cdp_schema_version")


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """A complete gzip member holding ``data`` (readable by ``gzip``, ``zcat`` and Spark)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits=31: gzip header and trailer.
    return compressor.compress(data) + compressor.flush()


@dataclass(frozen=True)
class WrittenBatch:
    """A batch that is durably in the store."""

    key: str
    url: str
    stream: str
    record_count: int
    size_bytes: int


class RawZoneWriter:
    """Lands batches of one tenant's and provider's records in the raw zone."""

    def __init__(self, store: ObjectStore, *, tenant: str, provider: str, compression_level: int = 6) -> None:
        self.store = store
        self.tenant = validate_name("tenant", tenant)
        self.provider = validate_name("provider", provider)
        self.compression_level = compression_level

    def write_batch(
        self, stream: str, records: Iterable[Mapping[str, Any]], *, when: datetime | None = None
    ) -> WrittenBatch:
        """Write ``records`` (already carrying their metadata columns) as one batch object."""
        rows = list(records)
        return self.write_ndjson(stream, ndjson(rows), len(rows), when=when)

    def write_ndjson(
        self, stream: str, payload: bytes, record_count: int, *, when: datetime | None = None
    ) -> WrittenBatch:
        """Write records already serialised as NDJSON (one object per line) as one gzip batch object."""
        when = when or datetime.now(UTC)
        compressed = gzip_bytes(payload, self.compression_level)
        key = raw_batch_key(self.tenant, self.provider, stream, when)
        url = self.store.write_bytes(key, compressed)
        return WrittenBatch(key=key, url=url, stream=stream, record_count=record_count, size_bytes=len(compressed))


def read_batch(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """Every record of one gzip NDJSON batch."""

    data = zlib.decompress(store.read_bytes(key), 31)
    return [loads(line) for line in data.splitlines() if line.strip()]
