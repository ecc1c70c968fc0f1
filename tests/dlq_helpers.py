"""Shared test data for the tests/test_dlq_*.py modules: schemas, dead letters and zone stores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType, FieldError
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore

TENANT = "acme"
PROVIDER = "stripe"
STREAM = "customers"
SUBJECT = f"{TENANT}/{PROVIDER}/{STREAM}"
MISSING_ID = "'id' is a required property"

# Version 1 declares no nickname and allows nothing undeclared; version 2 (the fix) adds nickname as optional.
SCHEMA_V1: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "amount": {"type": ["integer", "null"]},
    },
    "required": ["id"],
    "additionalProperties": False,
}
SCHEMA_V2: dict[str, Any] = {
    **SCHEMA_V1,
    "properties": {**SCHEMA_V1["properties"], "nickname": {"type": ["string", "null"]}},
}


@dataclass(frozen=True)
class Zones:
    """The three stores a DLQ operation touches, side by side under one root (local or S3)."""

    root: str
    dlq: ObjectStore
    raw: ObjectStore
    registry: ObjectStore

    @classmethod
    def under(cls, root: str) -> Zones:
        return cls(
            root=root,
            dlq=ObjectStore(f"{root}/dlq"),
            raw=ObjectStore(f"{root}/raw"),
            registry=ObjectStore(f"{root}/registry"),
        )

    def cli_options(self) -> list[str]:
        return ["--dlq-url", self.dlq.url, "--raw-url", self.raw.url, "--registry-url", self.registry.url]


def customer(number: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"cus_{number:04d}", "email": f"person{number}@example.com", "amount": number * 100, **extra}


def validation_letter(record: dict[str, Any], errors: list[FieldError], *, stream: str = STREAM) -> DeadLetter:
    return DeadLetter(
        error_type=ErrorType.SCHEMA_VALIDATION,
        error_message=f"{errors[0].path}: {errors[0].message}",
        stream=stream,
        record=record,
        errors=errors,
        schema_version=1,
    )


def write_letters(
    store: ObjectStore,
    letters: list[DeadLetter],
    *,
    tenant: str = TENANT,
    provider: str = PROVIDER,
    when: datetime | None = None,
) -> list[str]:
    """Write ``letters`` as DLQ batches; returns their keys."""
    queue = DeadLetterQueue(store, tenant=tenant, provider=provider)
    return [batch.key for batch in queue.write(letters, when=when or datetime.now(UTC))]


def failing_batch(store: ObjectStore, *, fixable: int = 3, broken: int = 2) -> str:
    """One DLQ batch: ``fixable`` records failing v1 only for their nickname, ``broken`` ones missing their id."""
    letters = [
        validation_letter(
            customer(n, nickname=f"nick{n}"),
            [FieldError("$", "Additional properties are not allowed ('nickname' was unexpected)")],
        )
        for n in range(fixable)
    ]
    letters += [
        validation_letter(
            {"email": f"anon{n}@example.com", "amount": n}, [FieldError("$", "'id' is a required property")]
        )
        for n in range(broken)
    ]
    (key,) = write_letters(store, letters)
    return key


def all_rows(store: ObjectStore, prefix: str = "") -> list[dict[str, Any]]:
    """Every row of every batch under ``prefix``, skipping the operations' own ``_`` folders."""
    rows = []
    for info in store.list(prefix):
        if not info.key.startswith("_") and info.key.endswith(".ndjson.gz"):
            rows.extend(read_batch(store, info.key))
    return rows
