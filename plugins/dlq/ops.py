"""Reading the dead letter queue for support: list, show, stats, purge and the DLQ-volume alert.

Batches are the objects of the DLQ layout (``plugins/core/dead_letters.py``). Keys starting with ``_`` are the
operations' own bookkeeping (``_audit/``, ``_journal/``, ``_lease/``, ``_retired/``) and are never batches: tenant
names cannot start with ``_``. Reprocessing lives in ``plugins/dlq/reprocess.py``, resubmission in
``plugins/dlq/resubmit.py``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import pluggy

from plugins.alerts import raise_alert
from plugins.core.dead_letters import ErrorType, new_run_id
from plugins.core.errors import ConfigError, ObjectNotFoundError
from plugins.core.layout import BatchKey, parse_batch_key, sanitize_stream_name
from plugins.core.leases import Lease, LeaseBusy, LeaseManager
from plugins.core.raw_zone import read_batch
from plugins.core.redaction import RecordMasker
from plugins.core.serialization import dumps
from plugins.core.storage import ObjectStore
from plugins.descriptors import Alert, Severity
from plugins.dlq.audit import AuditEntry, AuditLog

RETIRED_PREFIX = "_retired"
JOURNAL_PREFIX = "_journal"
LEASE_PREFIX = "_lease"
# The leases of the operations that change a batch (plugins/core/leases.py); purge takes both before deleting one.
REPROCESS_LEASE_PREFIX = f"{LEASE_PREFIX}/reprocess"
RESUBMIT_LEASE_PREFIX = f"{LEASE_PREFIX}/resubmit"
# Entries that describe a failed request rather than a record: they are resubmitted, never reprocessed, and they do
# not count against a provider's validation success rate.
REQUEST_ERROR_TYPES = frozenset({ErrorType.EXTRACTION_FAILED, ErrorType.RATE_LIMIT_EXHAUSTED, ErrorType.AUTH_FAILED})
# Rows of a processed table that a quality rule or a serving store rejected: their raw records are in the raw zone
# already, so they do not lower a provider's validation success rate, and they are not reprocessed into the raw zone.
TRANSFORM_ERROR_TYPES = frozenset({ErrorType.TRANSFORM_REJECTED, ErrorType.LOAD_REJECTED})
# Members an activation destination did not take (provider = the destination): not records of a source, so they do not
# count against any provider's validation success rate; reprocess sends them again (plugins/activation).
DELIVERY_ERROR_TYPES = frozenset({ErrorType.ACTIVATION_FAILED})
_DURATION_RE = re.compile(r"(?P<amount>[0-9]+)\s*(?P<unit>[smhdw])")  # Always fullmatch: "7d\n" is no duration.
# Longer spans are typos, and would overflow the date arithmetic (``now - 9999999d``) into a traceback.
MAX_DURATION = timedelta(days=36525)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BatchNotFoundError(ObjectNotFoundError):
    """A DLQ batch named on the command line does not exist."""


def parse_duration(setting: str, text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``2w`` as a timedelta; anything else fails naming ``setting``."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None or int(match["amount"]) <= 0:
        raise ConfigError(setting, f"'{text}' is not a duration like 30m, 24h, 7d or 2w")
    try:
        value = timedelta(**{_UNITS[match["unit"]]: int(match["amount"])})
    except OverflowError:
        value = MAX_DURATION + timedelta(days=1)
    if value > MAX_DURATION:
        limit = format_duration(MAX_DURATION)
        raise ConfigError(setting, f"'{text}' is longer than 100 years ({limit}); check the number")
    return value


def format_duration(value: timedelta) -> str:
    """The largest exact unit: ``2w``, ``1d``, ``36h``, ``90m``, ``45s``."""
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_instant(setting: str, text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 date or instant (UTC unless it says otherwise), or a duration back from now (``24h``, ``7d``)."""
    now = now or datetime.now(UTC)
    if _DURATION_RE.fullmatch(text.strip().lower()):
        return now - parse_duration(setting, text)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(setting, f"'{text}' is neither an ISO-8601 date/time nor a duration like 24h or 7d") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DlqFilter:
    """Which batches an operation works on; every field narrows, ``None`` means any."""

    tenant: str | None = None
    provider: str | None = None
    error_type: str | None = None
    stream: str | None = None
    since: datetime | None = None  # Landed at or after.
    until: datetime | None = None  # Landed strictly before.

    def __post_init__(self) -> None:
        if self.error_type is not None and self.error_type not in {e.value for e in ErrorType}:
            known = ", ".join(e.value for e in ErrorType)
            raise ConfigError("--error-type", f"'{self.error_type}' is not an error type; use one of {known}")

    def prefix(self) -> str:
        """The longest key prefix this filter pins down (listing only that part of the store)."""
        parts = []
        for value in (self.tenant, self.provider, self.error_type):
            if value is None:
                break
            parts.append(value)
        return "/".join(parts)

    def matches(self, key: BatchKey) -> bool:
        return (
            (self.tenant is None or key.tenant == self.tenant)
            and (self.provider is None or key.provider == self.provider)
            and (self.error_type is None or key.error_type == self.error_type)
            and (self.stream is None or key.stream == sanitize_stream_name(self.stream))
            and (self.since is None or key.landed_at >= self.since)
            and (self.until is None or key.landed_at < self.until)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "error_type": self.error_type,
            "stream": self.stream,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }


@dataclass(frozen=True)
class DlqBatch:
    """One DLQ batch object and, when counted, how many entries it holds."""

    key: str
    tenant: str
    provider: str
    error_type: str
    stream: str
    landed_at: datetime
    size_bytes: int
    record_count: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tenant": self.tenant,
            "provider": self.provider,
            "error_type": self.error_type,
            "stream": self.stream,
            "landed_at": self.landed_at.isoformat(),
            "size_bytes": self.size_bytes,
            "records": self.record_count,
        }


def _batch_from(key: str, size: int) -> DlqBatch | None:
    if key.startswith("_"):
        return None
    try:
        parsed = parse_batch_key(key)
    except ValueError:
        return None
    if parsed.error_type is None:
        return None
    return DlqBatch(
        key=key,
        tenant=parsed.tenant,
        provider=parsed.provider,
        error_type=parsed.error_type,
        stream=parsed.stream,
        landed_at=parsed.landed_at,
        size_bytes=size,
    )


def list_batches(store: ObjectStore, flt: DlqFilter | None = None, *, count_records: bool = True) -> list[DlqBatch]:
    """The DLQ batches matching ``flt``, oldest first, with their entry counts unless ``count_records`` is off."""
    flt = flt or DlqFilter()
    batches = []
    for info in store.iter_objects(flt.prefix()):
        batch = _batch_from(info.key, info.size)
        if batch is None or not flt.matches(parse_batch_key(info.key)):
            continue
        if count_records:
            batch = replace(batch, record_count=len(read_batch(store, info.key)))
        batches.append(batch)
    return sorted(batches, key=lambda b: (b.landed_at, b.key))


def normalize_batch_key(store: ObjectStore, batch: str) -> str:
    """A batch as the user typed it (a key, or the full URL ``list`` printed) as a key of ``store``."""
    root = store.url_for("")
    for prefix in (root + "/", store.url.rstrip("/") + "/"):
        if batch.startswith(prefix):
            return batch[len(prefix) :]
    return batch.strip("/")


def get_batch(store: ObjectStore, batch: str) -> DlqBatch:
    """The batch ``batch`` names, with its count; fails with a clear message when it is not a DLQ batch."""
    key = normalize_batch_key(store, batch)
    parsed = _batch_from(key, 0)
    if parsed is None:
        raise BatchNotFoundError(f"'{batch}' is not a DLQ batch key (see 'cdp dlq list' for the keys)")
    folder = key.rsplit("/", 1)[0]
    size = next((info.size for info in store.iter_objects(folder) if info.key == key), None)
    if size is None:
        retired = f"{RETIRED_PREFIX}/{key}"
        hint = " (it was already retired by a reprocess, resubmit or purge)" if store.exists(retired) else ""
        raise BatchNotFoundError(f"no DLQ batch {store.url_for(key)}{hint}")
    return replace(parsed, size_bytes=size, record_count=len(read_batch(store, key)))


def read_entries(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """Every dead letter of one batch, in order."""
    return read_batch(store, key)


# -- show -------------------------------------------------------------------------------------------------------------


@dataclass
class ErrorGroup:
    """Entries sharing one error message at one JSON path, with a (masked) example record."""

    error_type: str
    path: str
    message: str
    count: int = 0
    example: Any = None
    example_line: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type,
            "path": self.path,
            "message": self.message,
            "count": self.count,
            "example_line": self.example_line,
            "example_record": self.example,
        }


@dataclass(frozen=True)
class BatchReport:
    """What ``cdp dlq show`` prints about one batch."""

    batch: DlqBatch
    streams: dict[str, int]
    retry_counts: dict[int, int]
    schema_versions: dict[str, int]
    groups: list[ErrorGroup]
    context_examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch.as_dict(),
            "streams": self.streams,
            "retry_counts": {str(k): v for k, v in sorted(self.retry_counts.items())},
            "schema_versions": self.schema_versions,
            "groups": [group.as_dict() for group in self.groups],
            "contexts": self.context_examples,
        }


_PATH_STEP_RE = re.compile(r"\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]|\['(?P<quoted>(?:[^'\\]|\\.)*)'\]")
_MISSING = object()


def _value_at(record: Any, path: str) -> Any:
    """The value at a JSON path like ``$.address.city``, ``$.items[0]`` or ``$['odd:name']``; _MISSING if none."""
    if not path.startswith("$"):
        return _MISSING
    node, position = record, 1
    while position < len(path):
        match = _PATH_STEP_RE.match(path, position)
        if match is None:
            return _MISSING
        position = match.end()
        if match["index"] is not None:
            if not isinstance(node, list) or int(match["index"]) >= len(node):
                return _MISSING
            node = node[int(match["index"])]
            continue
        name = match["name"] if match["name"] is not None else match["quoted"].replace("\\'", "'")
        if not isinstance(node, dict) or name not in node:
            return _MISSING
        node = node[name]
    return node


def generic_message(message: str, record: Any, path: str) -> str:
    """``"1700" is not of type "integer"`` -> ``<value> is not of type "integer"``, so one problem is one group
    whatever the failing values were (and no record value leaks into the group's title)."""
    value = _value_at(record, path)
    if value is _MISSING or value is None or isinstance(value, bool | dict | list):
        return message  # null, true and false say more than "<value>" and carry no personal data
    for rendered in (dumps(value).decode(), repr(value)):
        if message.startswith(rendered + " "):
            return "<value>" + message[len(rendered) :]
    return message


def show_batch(store: ObjectStore, batch: str, masker: RecordMasker | None = None) -> BatchReport:
    """The entries of ``batch`` grouped by error message and JSON path, largest group first, examples masked."""
    masker = masker or RecordMasker.configured()
    info = get_batch(store, batch)
    entries = read_entries(store, info.key)
    groups: dict[tuple[str, str, str], ErrorGroup] = {}
    streams: Counter[str] = Counter()
    retries: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    contexts: list[dict[str, Any]] = []
    for line, entry in enumerate(entries, start=1):
        streams[str(entry.get("stream"))] += 1
        retries[int(entry.get("retry_count") or 0)] += 1
        versions[str(entry.get("schema_version"))] += 1
        if entry.get("context") and len(contexts) < 3:
            contexts.append(masker.mask(entry["context"]))
        error_type = str(entry.get("error_type"))
        problems = entry.get("errors") or [{"path": "$", "message": entry.get("error_message", "")}]
        seen: set[tuple[str, str, str]] = set()
        for problem in problems:
            path = str(problem.get("path", "$"))
            group_key = (error_type, path, generic_message(str(problem.get("message", "")), entry.get("record"), path))
            if group_key in seen:
                continue
            seen.add(group_key)
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = ErrorGroup(error_type, group_key[1], group_key[2])
                group.example = masker.mask(entry.get("record"))
                group.example_line = line
            group.count += 1
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.path, g.message))
    return BatchReport(
        batch=info,
        streams=dict(streams),
        retry_counts=dict(retries),
        schema_versions=dict(versions),
        groups=ordered,
        context_examples=contexts,
    )


# -- stats ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsRow:
    tenant: str
    provider: str
    error_type: str
    stream: str
    batches: int
    records: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "error_type": self.error_type,
            "stream": self.stream,
            "batches": self.batches,
            "records": self.records,
        }


@dataclass(frozen=True)
class ProviderRate:
    """Validation success rate of one tenant's provider: raw records / (raw + DLQ records)."""

    tenant: str
    provider: str
    raw_records: int
    dlq_records: int
    failed_requests: int

    @property
    def success_rate(self) -> float | None:
        total = self.raw_records + self.dlq_records
        return round(self.raw_records / total, 6) if total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "raw_records": self.raw_records,
            "dlq_records": self.dlq_records,
            "failed_requests": self.failed_requests,
            "success_rate": self.success_rate,
        }


@dataclass(frozen=True)
class DlqStats:
    since: datetime
    until: datetime
    rows: list[StatsRow]
    providers: list[ProviderRate]

    def totals(self) -> dict[str, int]:
        return {"batches": sum(r.batches for r in self.rows), "records": sum(r.records for r in self.rows)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "totals": self.totals(),
            "by_stream": [row.as_dict() for row in self.rows],
            "providers": [p.as_dict() for p in self.providers],
        }


def _raw_counts(raw_store: ObjectStore, flt: DlqFilter) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    prefix = "/".join(p for p in (flt.tenant, flt.provider if flt.tenant else None) if p)
    for info in raw_store.iter_objects(prefix):
        if info.key.startswith("_"):
            continue
        try:
            key = parse_batch_key(info.key)
        except ValueError:
            continue
        if key.error_type is not None or not replace(flt, error_type=None).matches(key):
            continue
        counts[(key.tenant, key.provider)] += len(read_batch(raw_store, info.key))
    return counts


def dlq_stats(dlq_store: ObjectStore, raw_store: ObjectStore | None, flt: DlqFilter) -> DlqStats:
    """DLQ counts by tenant, provider, error type and stream in ``flt``'s window, and the success rate per provider."""
    now = datetime.now(UTC)
    since = flt.since or now - timedelta(days=1)
    flt = replace(flt, since=since)
    grouped: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    record_totals: dict[tuple[str, str], int] = defaultdict(int)
    request_totals: dict[tuple[str, str], int] = defaultdict(int)
    for batch in list_batches(dlq_store, flt):
        count = batch.record_count or 0
        row = grouped[(batch.tenant, batch.provider, batch.error_type, batch.stream)]
        row[0] += 1
        row[1] += count
        if batch.error_type in REQUEST_ERROR_TYPES:
            request_totals[(batch.tenant, batch.provider)] += count
        elif batch.error_type not in TRANSFORM_ERROR_TYPES | DELIVERY_ERROR_TYPES:
            record_totals[(batch.tenant, batch.provider)] += count
    rows = [StatsRow(*key, batches=v[0], records=v[1]) for key, v in sorted(grouped.items())]
    raw = _raw_counts(raw_store, flt) if raw_store is not None else {}
    providers = [
        ProviderRate(
            tenant=tenant,
            provider=provider,
            raw_records=raw.get((tenant, provider), 0),
            dlq_records=record_totals.get((tenant, provider), 0),
            failed_requests=request_totals.get((tenant, provider), 0),
        )
        for tenant, provider in sorted({*raw, *record_totals, *request_totals})
    ]
    return DlqStats(since=since, until=flt.until or now, rows=rows, providers=providers)


# -- volume alert ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeBreach:
    """A tenant's provider whose DLQ grew by more than the threshold within the window."""

    tenant: str
    provider: str
    records: int
    threshold: int
    window: timedelta
    by_error_type: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "records": self.records,
            "threshold": self.threshold,
            "window_seconds": int(self.window.total_seconds()),
            "by_error_type": self.by_error_type,
        }


def check_dlq_volume(
    store: ObjectStore,
    *,
    threshold: int,
    window: timedelta,
    flt: DlqFilter | None = None,
    now: datetime | None = None,
    pm: pluggy.PluginManager | None = None,
) -> list[VolumeBreach]:
    """Raise a ``dlq_volume`` alert for every tenant and provider with more than ``threshold`` DLQ entries that
    landed within ``window``; returns the breaches."""
    if threshold < 0:
        raise ConfigError("--threshold", f"{threshold} must be 0 or more")
    now = now or datetime.now(UTC)
    flt = replace(flt or DlqFilter(), since=now - window, until=None)
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for batch in list_batches(store, flt):
        counts[(batch.tenant, batch.provider)][batch.error_type] += batch.record_count or 0
    breaches = []
    for (tenant, provider), by_type in sorted(counts.items()):
        total = sum(by_type.values())
        if total <= threshold:
            continue
        breach = VolumeBreach(tenant, provider, total, threshold, window, dict(sorted(by_type.items())))
        breaches.append(breach)
        raise_alert(
            Alert(
                kind="dlq_volume",
                severity=Severity.WARNING,
                message=(
                    f"{total} dead letters for {tenant}/{provider} in the last {format_duration(window)} "
                    f"(threshold {threshold}); "
                    f"run 'cdp dlq stats --tenant {tenant} --provider {provider}'"
                ),
                tenant=tenant,
                provider=provider,
                # tenant and provider are the alert's own fields; details add what they do not say.
                details={k: v for k, v in breach.as_dict().items() if k not in ("tenant", "provider")},
            ),
            pm,
        )
    return breaches


# -- purge ----------------------------------------------------------------------------------------------------------


class ReportedBatch(Protocol):
    """What a command that works batch by batch reports for each batch."""

    status: str

    def as_dict(self) -> dict[str, Any]: ...


OutcomeT = TypeVar("OutcomeT", bound=ReportedBatch)


@dataclass
class BatchRunReport(Generic[OutcomeT]):
    """Every batch's outcome of a reprocess or resubmit run, and the audit entry it wrote (none for a dry run)."""

    outcomes: list[OutcomeT]
    dry_run: bool
    audit_key: str | None = None

    @property
    def ok(self) -> bool:
        return all(outcome.status != "failed" for outcome in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "batches": [outcome.as_dict() for outcome in self.outcomes],
            "audit_key": self.audit_key,
        }


@dataclass(frozen=True)
class PurgeResult:
    batches: list[str]
    records: int
    retired_copies: list[str]
    dry_run: bool
    audit_key: str | None = None
    held: list[str] = field(default_factory=list)  # Left alone: a live reprocess or resubmit run holds them.

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "records": self.records,
            "retired_copies": self.retired_copies,
            "dry_run": self.dry_run,
            "audit_key": self.audit_key,
            "held": self.held,
        }


def purge_candidates(store: ObjectStore, flt: DlqFilter) -> tuple[list[DlqBatch], list[str]]:
    """Active batches and retired copies (kept by reprocess/resubmit) that ``flt`` selects for deletion."""
    if flt.until is None:
        raise ConfigError("--older-than", "is required: purge never deletes without an age limit")
    batches = list_batches(store, flt)
    retired = []
    for info in store.iter_objects(RETIRED_PREFIX):
        original = info.key[len(RETIRED_PREFIX) + 1 :]
        batch = _batch_from(original, info.size)
        if batch is not None and flt.matches(parse_batch_key(original)):
            retired.append(info.key)
    return batches, sorted(retired)


def purge(
    store: ObjectStore,
    batches: Iterable[DlqBatch],
    retired: Iterable[str],
    *,
    actor: str,
    flt: DlqFilter,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete the given batches and retired copies, and audit it (counts before and after)."""
    batches = list(batches)
    retired = list(retired)
    records = sum(b.record_count or 0 for b in batches)
    if dry_run or not (batches or retired):  # Nothing deleted is no change: nothing to audit.
        return PurgeResult([b.key for b in batches], records, retired, dry_run=dry_run)
    run_id = new_run_id()
    prefixes = (REPROCESS_LEASE_PREFIX, RESUBMIT_LEASE_PREFIX)
    managers = [LeaseManager(store, prefix, run_id=run_id) for prefix in prefixes]
    deleted: list[DlqBatch] = []
    held: list[DlqBatch] = []
    for batch in batches:  # Under both leases, so no reprocess or resubmit is working on what purge deletes.
        leases = [manager.acquire(batch.key) for manager in managers]
        try:
            if any(isinstance(lease, LeaseBusy) for lease in leases):
                held.append(batch)
                continue
            store.delete(batch.key)
            deleted.append(batch)
        finally:
            for lease in leases:
                if isinstance(lease, Lease):
                    lease.release()
    batches = deleted
    records = sum(b.record_count or 0 for b in batches)
    for key in retired:
        store.delete(key)
    entry = AuditEntry(
        action="purge",
        actor=actor,
        parameters=flt.as_dict(),
        batches=[b.key for b in batches],
        counts_before={"dlq_batches": len(batches), "dlq_records": records, "retired_copies": len(retired)},
        counts_after={"dlq_batches": 0, "dlq_records": 0, "retired_copies": 0, "purged_records": records},
    )
    audit_key = AuditLog(store).record(entry)
    return PurgeResult(
        [b.key for b in batches], records, retired, dry_run=False, audit_key=audit_key, held=[b.key for b in held]
    )
