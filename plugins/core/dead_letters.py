"""The dead letter queue: every record that cannot land in the raw zone, with the reason, never lost.

Layout: ``{dlq_url}/{tenant}/{provider}/{error_type}/year=YYYY/month=MM/day=DD/{stream}_{UTC ts}_{unique}.ndjson.gz``.
Each line is one dead letter: ``error_type``, ``error_message``, ``errors`` (``[{path, message}]``), ``tenant``,
``provider``, ``stream``, ``schema_version``, ``failed_at``, ``retry_count``, ``run_id``, ``context`` (what a
reprocessor needs beyond the record, e.g. an extraction window) and ``record`` (the original record, unchanged).
Input that cannot be represented exactly as JSON (NaN, 1e999, invalid UTF-8...) has ``record: null`` and keeps the
original line in ``record_text`` (valid UTF-8) or ``record_base64`` (its bytes otherwise).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from plugins.core.layout import dlq_batch_key, validate_name
from plugins.core.raw_zone import WrittenBatch, gzip_bytes
from plugins.core.serialization import ndjson
from plugins.core.storage import ObjectStore


class ErrorType(StrEnum):
    """Why a record is in the DLQ; each is a folder of the layout."""

    SCHEMA_VALIDATION = "schema_validation"  # The record does not match its stream's schema.
    SCHEMA_INCOMPATIBLE = "schema_incompatible"  # The stream's new schema breaks the subject's compatibility mode.
    PARSE_ERROR = "parse_error"  # An input line that is not JSON or not a Singer message.
    RECORD_TOO_LARGE = "record_too_large"  # Over the target's record size limit.
    EXTRACTION_FAILED = "extraction_failed"  # A tap request failed after its retries.
    RATE_LIMIT_EXHAUSTED = "rate_limit_exhausted"  # A tap was throttled past its retries.
    AUTH_FAILED = "auth_failed"  # The provider rejected the credentials.
    WEBHOOK_INVALID = "webhook_invalid"  # A correctly signed webhook whose body cannot be read or mapped.
    TRANSFORM_REJECTED = (
        "transform_rejected"  # A row a transform's quality rule rejected (the rule, the row, its file).
    )
    LOAD_REJECTED = "load_rejected"  # A row a serving store refused (the document, the store's error for it).
    ACTIVATION_FAILED = "activation_failed"  # A member a destination did not take (failed or unconfirmed send).


@dataclass(frozen=True)
class FieldError:
    """One problem with a record, located by JSON path (``$.address.city``)."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class DeadLetter:
    """One record (or failed request) bound for the DLQ."""

    error_type: ErrorType
    error_message: str
    stream: str
    record: Any
    errors: list[FieldError] = field(default_factory=list)
    schema_version: int | None = None
    retry_count: int = 0
    context: dict[str, Any] = field(default_factory=dict)
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # For input that cannot be represented exactly as JSON (``record`` is then None): the original line as text
    # when it is valid UTF-8, else its bytes in base64.
    record_text: str | None = None
    record_base64: str | None = None


def new_run_id() -> str:
    """A unique id for one run of a writer, stamped on every dead letter it writes."""
    return f"run_{datetime.now(UTC):%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"


class DeadLetterQueue:
    """Writes dead letters for one tenant and provider, one object per error type and stream per call."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        tenant: str,
        provider: str,
        run_id: str | None = None,
        compression_level: int = 6,
    ) -> None:
        self.store = store
        self.tenant = validate_name("tenant", tenant)
        self.provider = validate_name("provider", provider)
        self.run_id = run_id or new_run_id()
        self.compression_level = compression_level

    def entry(self, letter: DeadLetter) -> dict[str, Any]:
        """The JSON object one dead letter is stored as."""
        return {
            "error_type": letter.error_type.value,
            "error_message": letter.error_message,
            "errors": [error.as_dict() for error in letter.errors],
            "tenant": self.tenant,
            "provider": self.provider,
            "stream": letter.stream,
            "schema_version": letter.schema_version,
            "failed_at": letter.failed_at.astimezone(UTC).isoformat(),
            "retry_count": letter.retry_count,
            "run_id": self.run_id,
            "context": letter.context,
            "record": letter.record,
            **({"record_text": letter.record_text} if letter.record_text is not None else {}),
            **({"record_base64": letter.record_base64} if letter.record_base64 is not None else {}),
        }

    def write(self, letters: Iterable[DeadLetter], *, when: datetime | None = None) -> list[WrittenBatch]:
        """Durably write ``letters``; returns one batch per (error type, stream). Nothing is written for none."""
        when = when or datetime.now(UTC)
        groups: dict[tuple[ErrorType, str], list[dict[str, Any]]] = defaultdict(list)
        for letter in letters:
            groups[(letter.error_type, letter.stream)].append(self.entry(letter))
        written = []
        for (error_type, stream), entries in sorted(groups.items()):
            key = dlq_batch_key(self.tenant, self.provider, error_type.value, stream, when)
            payload = gzip_bytes(ndjson(entries), self.compression_level)
            url = self.store.write_bytes(key, payload)
            written.append(
                WrittenBatch(key=key, url=url, stream=stream, record_count=len(entries), size_bytes=len(payload))
            )
        return written
