"""The audit log of DLQ operations: who changed what, when, with the record counts before and after.

Each entry is one JSON object under ``_audit/year=YYYY/month=MM/day=DD/{UTC timestamp}_{unique}.json`` in the DLQ
store. One object per entry (never an append), so it works the same on local folders and S3 and an entry is either
wholly there or not at all. Entries never hold record contents, only keys and counts.
"""

from __future__ import annotations

import getpass
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from plugins.core.layout import date_partition
from plugins.core.serialization import dumps, loads
from plugins.core.storage import ObjectStore

AUDIT_PREFIX = "_audit"


def current_actor(explicit: str | None = None) -> str:
    """Who is acting: ``--actor`` if given, else ``$USER``, else the login name, else ``unknown``."""
    if explicit:
        return explicit
    for name in ("USER", "LOGNAME"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class AuditEntry:
    """One change to the DLQ: ``action`` (reprocess, resubmit, purge), its parameters and its effect."""

    action: str
    actor: str
    parameters: dict[str, Any] = field(default_factory=dict)
    batches: list[str] = field(default_factory=list)
    counts_before: dict[str, int] = field(default_factory=dict)
    counts_after: dict[str, int] = field(default_factory=dict)
    outcome: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "actor": self.actor,
            "at": self.at.astimezone(UTC).isoformat(),
            "parameters": self.parameters,
            "batches": self.batches,
            "counts_before": self.counts_before,
            "counts_after": self.counts_after,
            "outcome": self.outcome,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], key: str = "") -> AuditEntry:
        return cls(
            action=str(data["action"]),
            actor=str(data["actor"]),
            parameters=dict(data.get("parameters") or {}),
            batches=list(data.get("batches") or []),
            counts_before=dict(data.get("counts_before") or {}),
            counts_after=dict(data.get("counts_after") or {}),
            outcome=str(data.get("outcome", "ok")),
            details=dict(data.get("details") or {}),
            at=datetime.fromisoformat(data["at"]),
            key=key,
        )


class AuditLog:
    """The audit log kept in a DLQ store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def record(self, entry: AuditEntry) -> str:
        """Durably write ``entry``; returns its key."""
        at = entry.at.astimezone(UTC)
        key = f"{AUDIT_PREFIX}/{date_partition(at)}/{at:%Y%m%dT%H%M%S%fZ}_{uuid.uuid4().hex[:12]}.json"
        self.store.write_bytes(key, dumps(entry.as_dict()))
        return key

    def entries(self, *, since: datetime | None = None, action: str | None = None) -> list[AuditEntry]:
        """Entries at or after ``since`` (all by default), oldest first, optionally of one action."""
        found = []
        for info in self.store.list(AUDIT_PREFIX):
            entry = AuditEntry.from_dict(loads(self.store.read_bytes(info.key)), key=info.key)
            if since is not None and entry.at < since:
                continue
            if action is not None and entry.action != action:
                continue
            found.append(entry)
        return sorted(found, key=lambda e: (e.at, e.key))
