"""Keeping the processed zone's Iceberg tables healthy: list, describe, history, rollback, compact, expire.

Every change commits like a transform does (one snapshot or one metadata change, no automatic retry): when another
writer committed meanwhile, the change is refused with a :class:`~plugins.transforms.commit.CommitError` that says to
run it again, and nothing is changed.

- **rollback** makes an older snapshot current. The record of processed raw files lives in each snapshot's summary,
  so it rolls back with the data: the next transform run processes again every raw file committed after that snapshot.
- **compact** bin-packs, per partition, the data files smaller than the target size into files of about that size:
  Spark reads them, :func:`write_data_files` writes them, :func:`commit_files` replaces them in one snapshot. Rows and
  the processed-raw-files record stay exactly as they were.
- **expire** removes snapshots older than a retention (keeping the last few of the current history), then deletes
  the files only they referenced, and files referenced by no snapshot at all (a crashed run's data files, a failed
  commit's manifests) once they are older than the retention, so a file a running transform has just written and not
  yet committed is never touched.
"""

from __future__ import annotations

import difflib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from plugins.core.errors import ConfigError
from plugins.core.events import log_event
from plugins.core.layout import validate_name
from plugins.core.storage import ObjectStore
from plugins.transforms.catalog import CatalogError, load_table
from plugins.transforms.commit import (
    MAINTENANCE_PROPERTY,
    PROCESSED_COUNT_PROPERTY,
    PROCESSED_FILES_PROPERTY,
    QUALITY_PROPERTY,
    CommitError,
    RowLevelDeletesError,
    commit_files,
    data_file,
    live_data_files,
    processed_raw_files,
    write_data_files,
)
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_data_files

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

MEGABYTE = 1024 * 1024
MIN_TARGET_FILE_SIZE = 128 * MEGABYTE
MAX_TARGET_FILE_SIZE = 512 * MEGABYTE
DEFAULT_TARGET_FILE_SIZE = 256 * MEGABYTE
DEFAULT_RETAIN_LAST = 5
_SIZE_RE = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[kmg]i?b?|b)?", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "m": MEGABYTE, "g": 1024 * MEGABYTE}


class UnknownSnapshotError(CatalogError):
    """A snapshot id named on the command line is not one of the table's."""


# -- listing and describing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    """One line of ``cdp tables list``: totals from the current snapshot's summary (no file is read)."""

    tenant: str
    table: str
    rows: int
    files: int
    size_bytes: int
    snapshot_id: int | None
    committed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(snapshot: Snapshot | None) -> dict[str, str]:
    if snapshot is None or snapshot.summary is None:
        return {}
    return {"operation": str(snapshot.summary.operation.value), **snapshot.summary.additional_properties}


def _committed_at(snapshot: Snapshot) -> datetime:
    return datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC)


def list_tables(catalog: SqlCatalog, tenant: str | None = None) -> list[TableInfo]:
    """Every table of every tenant (or of ``tenant``), sorted by tenant and table."""
    namespaces = sorted(catalog.list_namespaces())
    if tenant is not None:
        namespaces = [namespace for namespace in namespaces if namespace == (validate_name("tenant", tenant),)]
    found = []
    for namespace in namespaces:
        for identifier in sorted(catalog.list_tables(namespace)):
            table = catalog.load_table(identifier)
            snapshot = table.current_snapshot()
            summary = _summary(snapshot)
            found.append(
                TableInfo(
                    tenant=".".join(identifier[:-1]),
                    table=identifier[-1],
                    rows=int(summary.get("total-records", 0)),
                    files=int(summary.get("total-data-files", 0)),
                    size_bytes=int(summary.get("total-files-size", 0)),
                    snapshot_id=snapshot.snapshot_id if snapshot else None,
                    committed_at=_committed_at(snapshot) if snapshot else None,
                )
            )
    return found


def open_table(catalog: SqlCatalog, name: str) -> Table:
    """The table ``TENANT.TABLE``; an unknown one is a one-line CatalogError naming the closest existing tables."""
    tenant, dot, table = name.partition(".")
    if not dot:
        raise ConfigError("TABLE", f"'{name}' must be TENANT.TABLE, e.g. acme.customers")
    try:
        return load_table(catalog, tenant, table)
    except CatalogError:
        known = [f"{info.tenant}.{info.table}" for info in list_tables(catalog)]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CatalogError(f"no table '{name}'; {hint}'cdp tables list' shows the tables") from None


def _providing_snapshot(table: Table, snapshot: Snapshot | None, key: str) -> Snapshot | None:
    """The snapshot whose summary holds ``key``: ``snapshot`` or its nearest ancestor (compaction carries none)."""
    while snapshot is not None:
        if key in _summary(snapshot):
            return snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return None


def describe_table(table: Table) -> dict[str, Any]:
    """What ``cdp tables show`` prints: schema, partitioning, properties, location, processed files, last quality."""
    schema = table.schema()
    snapshot = table.current_snapshot()
    processed = _providing_snapshot(table, snapshot, PROCESSED_COUNT_PROPERTY)
    quality_from = _providing_snapshot(table, snapshot, QUALITY_PROPERTY)
    quality = None
    if quality_from is not None:
        quality = {
            "snapshot_id": quality_from.snapshot_id,
            "committed_at": _committed_at(quality_from),
            "report": orjson.loads(_summary(quality_from)[QUALITY_PROPERTY]),
        }
    return {
        "table": ".".join(table.name()),
        "location": table.location(),
        "columns": [
            {"name": column.name, "type": str(column.field_type), "required": column.required}
            for column in schema.fields
        ],
        "partitioning": [
            f"{field.transform}({schema.find_field(field.source_id).name})" for field in table.spec().fields
        ],
        "properties": dict(sorted(table.properties.items())),
        "current_snapshot": snapshot.snapshot_id if snapshot else None,
        "processed_raw_files": int(_summary(processed)[PROCESSED_COUNT_PROPERTY]) if processed else 0,
        "quality": quality,
    }


@dataclass(frozen=True)
class SnapshotInfo:
    """One line of ``cdp tables history``."""

    snapshot_id: int
    parent_id: int | None
    committed_at: datetime
    operation: str
    added_files: int
    removed_files: int
    added_rows: int
    removed_rows: int
    current: bool
    #: The snapshot's ``cdp.*`` summary properties (the processed-files record, a run's counts, maintenance marks).
    cdp: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def table_history(table: Table) -> list[SnapshotInfo]:
    """Every snapshot the table keeps, oldest first, the current one marked."""
    current = table.current_snapshot()
    history = []
    for snapshot in sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number)):
        summary = _summary(snapshot)
        history.append(
            SnapshotInfo(
                snapshot_id=snapshot.snapshot_id,
                parent_id=snapshot.parent_snapshot_id,
                committed_at=_committed_at(snapshot),
                operation=summary.get("operation", ""),
                added_files=int(summary.get("added-data-files", 0)),
                removed_files=int(summary.get("deleted-data-files", 0)),
                added_rows=int(summary.get("added-records", 0)),
                removed_rows=int(summary.get("deleted-records", 0)),
                current=current is not None and snapshot.snapshot_id == current.snapshot_id,
                cdp={key: value for key, value in sorted(summary.items()) if key.startswith("cdp.")},
            )
        )
    return history


# -- rollback -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackResult:
    table: str
    previous_snapshot_id: int | None
    snapshot_id: int
    processed_raw_files_before: int
    processed_raw_files: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(table: Table, snapshot_id: int) -> RollbackResult:
    """Make snapshot ``snapshot_id`` current (an older one, or a newer one a rollback left behind).

    No data is rewritten and no snapshot is made: the table's current-snapshot pointer moves, and with it the record
    of processed raw files, so the next transform run processes again what was committed after that snapshot.
    """
    from pyiceberg.exceptions import CommitFailedException

    name = ".".join(table.name())
    if table.snapshot_by_id(snapshot_id) is None:
        raise UnknownSnapshotError(
            f"table {name} has no snapshot {snapshot_id}; 'cdp tables history {name}' lists its snapshots"
        )
    current = table.current_snapshot()
    before = len(processed_raw_files(table))
    if current is None or current.snapshot_id != snapshot_id:
        try:
            table.manage_snapshots().set_current_snapshot(snapshot_id=snapshot_id).commit()
        except CommitFailedException as exc:
            raise CommitError(f"table {name} changed while rolling back ({exc}); run the rollback again") from exc
    result = RollbackResult(
        table=name,
        previous_snapshot_id=current.snapshot_id if current else None,
        snapshot_id=snapshot_id,
        processed_raw_files_before=before,
        processed_raw_files=len(processed_raw_files(table)),
    )
    log_event(logger, "table_rolled_back", **result.as_dict())
    return result


# -- compaction ---------------------------------------------------------------------------------------------------


def parse_file_size(text: str) -> int:
    """``256MB``, ``512m``, ``0.25GB``, ``268435456`` as bytes (binary units, as Iceberg's and Spark's sizes are),
    within the compaction target's range of 128 MB to 512 MB."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError("target_file_size", f"'{text}' is not a size like 256MB")
    unit = (match["unit"] or "").lower()[:1] if (match["unit"] or "").lower() != "b" else "b"
    size = int(float(match["amount"]) * _UNIT_BYTES[unit])
    if not MIN_TARGET_FILE_SIZE <= size <= MAX_TARGET_FILE_SIZE:
        raise ConfigError("target_file_size", f"'{text}' is outside 128MB..512MB, the range compaction aims for")
    return size


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did; ``snapshot_id`` is None when there was nothing to do."""

    table: str
    snapshot_id: int | None
    rewritten_files: int
    written_files: int
    rows: int
    partitions: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_compaction(files: Iterable[DataFile], target_size: int) -> list[list[DataFile]]:
    """Groups of data files to rewrite into one file each: per partition, the files smaller than ``target_size``,
    packed first-fit by decreasing size into bins of at most ``target_size``; a bin of one file is left alone."""
    by_partition: dict[tuple[int, tuple[Any, ...]], list[DataFile]] = {}
    for file in files:
        if file.file_size_in_bytes < target_size:
            partition = tuple(file.partition[i] for i in range(len(file.partition)))
            by_partition.setdefault((file.spec_id, partition), []).append(file)
    groups: list[list[DataFile]] = []
    for _, small in sorted(by_partition.items(), key=lambda item: repr(item[0])):
        bins: list[list[DataFile]] = []
        sizes: list[int] = []
        for file in sorted(small, key=lambda f: (-f.file_size_in_bytes, f.file_path)):
            slot = next((i for i, used in enumerate(sizes) if used + file.file_size_in_bytes <= target_size), None)
            if slot is None:
                bins.append([file])
                sizes.append(file.file_size_in_bytes)
            else:
                bins[slot].append(file)
                sizes[slot] += file.file_size_in_bytes
        groups.extend(group for group in bins if len(group) > 1)
    return groups


def compact(spark: SparkSession, table: Table, target_size: int = DEFAULT_TARGET_FILE_SIZE) -> CompactResult:
    """Rewrite the table's small data files into files of about ``target_size``, per partition, in ONE snapshot."""
    name = ".".join(table.name())
    groups = plan_compaction(live_data_files(table).values(), target_size)
    if not groups:
        log_event(logger, "table_compaction_skipped", table=name)
        return CompactResult(table=name, snapshot_id=None, rewritten_files=0, written_files=0, rows=0, partitions=0)
    run = f"compact-{uuid.uuid4().hex}"
    written: list[str] = []
    for number, group in enumerate(groups):
        rows = read_data_files(spark, table, [file.file_path for file in group]).drop(DATA_FILE_COLUMN)
        # One output file per group: a group is one partition, and an unpartitioned one must not split either.
        written.extend(write_data_files(rows.coalesce(1), table, run_id=f"{run}-{number}"))
    removed = [file for group in groups for file in group]
    expected = sum(file.record_count for file in removed)
    found = sum(data_file(table.io, table.metadata, path).record_count for path in written)
    if found != expected:  # Never commit a rewrite that lost or invented a row.
        for path in written:
            table.io.delete(path)
        raise CommitError(f"table {name}: compaction wrote {found} rows for {expected}; nothing was committed")
    try:
        committed = commit_files(
            table,
            add=written,
            remove=[file.file_path for file in removed],
            properties={MAINTENANCE_PROPERTY: "compact"},
        )
    except RowLevelDeletesError:  # Its own line says what to do; running again would not help.
        raise
    except CommitError as exc:
        raise CommitError(f"table {name} changed while compacting; run 'cdp tables compact {name}' again") from exc
    result = CompactResult(
        table=name,
        snapshot_id=committed.snapshot_id,
        rewritten_files=len(removed),
        written_files=len(written),
        rows=expected,
        partitions=len({(file.spec_id, repr(file.partition)) for file in removed}),
    )
    log_event(logger, "table_compacted", **result.as_dict())
    return result


# -- expiry -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpireResult:
    table: str
    expired_snapshots: list[int]
    deleted_files: int
    deleted_orphans: int
    kept_snapshots: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _referenced_files(table: Table, snapshots: Iterable[Snapshot], manifests_seen: dict[str, list[str]]) -> set[str]:
    """Every file ``snapshots`` need: manifest lists, manifests, live data and delete files, processed-files lists."""
    found: set[str] = set()
    for snapshot in snapshots:
        found.add(snapshot.manifest_list)
        if PROCESSED_FILES_PROPERTY in (summary := _summary(snapshot)):
            found.add(summary[PROCESSED_FILES_PROPERTY])
        for manifest in snapshot.manifests(table.io):
            found.add(manifest.manifest_path)
            if manifest.manifest_path not in manifests_seen:
                entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
                manifests_seen[manifest.manifest_path] = [entry.data_file.file_path for entry in entries]
            found.update(manifests_seen[manifest.manifest_path])
    return found


def _snapshots_to_expire(table: Table, cutoff: datetime, retain_last: int) -> list[int]:
    """Snapshots older than ``cutoff``, except the branch heads, the last ``retain_last`` of the current history, and
    the snapshots whose processed-files record a kept one inherits."""
    metadata = table.metadata
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    ancestors: list[Snapshot] = []
    snapshot = table.current_snapshot()
    while snapshot is not None and len(ancestors) < retain_last:
        ancestors.append(snapshot)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    protected |= {s.snapshot_id for s in ancestors}
    cutoff_ms = int(cutoff.timestamp() * 1000)
    expired = {s.snapshot_id for s in metadata.snapshots if s.timestamp_ms < cutoff_ms} - protected
    for kept in [s for s in metadata.snapshots if s.snapshot_id not in expired]:
        provider = _providing_snapshot(table, kept, PROCESSED_FILES_PROPERTY)
        if provider is not None:
            expired.discard(provider.snapshot_id)
    return sorted(expired)


def expire(
    table: Table, older_than: timedelta, *, retain_last: int = DEFAULT_RETAIN_LAST, now: datetime | None = None
) -> ExpireResult:
    """Expire the snapshots older than ``older_than`` and delete the files nothing references any more (see the
    module doc). Files a kept snapshot references are never deleted."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.refs import MAIN_BRANCH
    from pyiceberg.table.update import AssertRefSnapshotId

    if retain_last < 1:
        raise ConfigError("retain_last", f"{retain_last} must be at least 1: the current snapshot always stays")
    name = ".".join(table.name())
    cutoff = (now or datetime.now(UTC)) - older_than
    to_expire = _snapshots_to_expire(table, cutoff, retain_last)
    manifests_seen: dict[str, list[str]] = {}
    expired_files = _referenced_files(
        table, [s for s in table.snapshots() if s.snapshot_id in set(to_expire)], manifests_seen
    )
    if to_expire:
        expiry = table.maintenance.expire_snapshots().by_ids(to_expire)
        # pyiceberg's expiry asserts nothing about the table: a rollback or commit since we chose the snapshots (the
        # current one among them, say) must refuse it instead, like every other change here.
        current = table.current_snapshot()
        unchanged = {"snapshot-id": current.snapshot_id if current else None, "ref": MAIN_BRANCH}
        expiry._requirements += (AssertRefSnapshotId.model_validate(unchanged),)
        try:
            expiry.commit()
        except CommitFailedException as exc:
            raise CommitError(f"table {name} changed while expiring ({exc}); run the expiry again") from exc
    # Whatever the table holds now (a writer may have committed since): every kept snapshot's files stay.
    table.refresh()
    kept = _referenced_files(table, table.snapshots(), manifests_seen)
    kept.add(table.metadata_location)
    kept.update(entry.metadata_file for entry in table.metadata.metadata_log)
    deleted = orphans = 0
    location = table.location().rstrip("/")
    for info in ObjectStore(location, setting="processed_url").iter_objects():
        path = f"{location}/{info.key}"
        if path in kept:
            continue
        if path in expired_files:
            deleted += 1
        elif info.modified_at is not None and info.modified_at < cutoff:
            orphans += 1  # Referenced by no snapshot and older than the retention: a crashed run's leftovers.
        else:
            continue  # Possibly a running transform's uncommitted output: the age guard keeps it.
        table.io.delete(path)
    result = ExpireResult(
        table=name,
        expired_snapshots=to_expire,
        deleted_files=deleted,
        deleted_orphans=orphans,
        kept_snapshots=len(table.snapshots()),
    )
    log_event(logger, "table_expired", **{**result.as_dict(), "expired_snapshots": len(to_expire)})
    return result
