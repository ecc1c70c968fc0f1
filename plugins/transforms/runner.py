"""The transform runner: every registered transform, per tenant, in dependency order, incrementally or from scratch.

For each tenant (under a lease: one run per tenant at a time) and each transform (``order_transforms``), the runner
reads the inputs, calls the function (``plugins/transforms/run.py`` is the contract), and then does the same for every
table: erasure, quality rules (rejected rows to the DLQ), the merge into the table, the schema, the commit (output
and the record of processed inputs in ONE snapshot), the counts and the quality report. docs/transforms.md,
"Running transforms", describes the modes, the merge rule and the counts.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson

from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.core.leases import Lease, LeaseBusy, LeaseLostError, LeaseManager
from plugins.core.storage import ObjectStore
from plugins.core.zones import Zone, resolve_zone_url
from plugins.descriptors import RawInput, TableInput, TransformDescriptor, order_transforms
from plugins.transforms.catalog import ProcessedZone, create_table, table_identifier
from plugins.transforms.commit import (
    MAINTENANCE_PROPERTY,
    QUALITY_PROPERTY,
    commit_files,
    data_file,
    files_in_partitions_of,
    live_data_files,
    processed_raw_files,
    rewrite_keeping_rows,
    write_data_files,
)
from plugins.transforms.java import NoUsableJavaError
from plugins.transforms.raw_reader import RawFile, list_raw_files, pending_raw_files, read_raw
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN, subject_struct
from plugins.transforms.run import TransformOutput, TransformRun, TransformSettings
from plugins.transforms.settings import TenantSettings
from plugins.transforms.spark import SparkSessionError
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_data_files, read_table, table_struct

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from schema_registry import SchemaRegistry

logger = logging.getLogger(__name__)

#: Snapshot summary keys the runner adds (Iceberg keeps summaries as strings).
INPUT_SNAPSHOTS_PROPERTY = "cdp.input-snapshots"
RUN_ID_PROPERTY = "cdp.run-id"
COUNT_PROPERTY_PREFIX = "cdp."
#: A transform's own properties (``TransformOutput.properties``) are recorded under this prefix, so no name of theirs
#: can be one of the framework's or of Iceberg's own summary (``added-records``, ``operation``...).
TRANSFORM_PROPERTY_PREFIX = "cdp.transform."
LEASE_PREFIX = "_leases/transform"
REPORTS_PREFIX = "_reports"
#: The framework's columns the table keeps: the raw file a row came from (the merge's tie-break, the DLQ's pointer).
LINEAGE_COLUMNS = (SOURCE_FILE_COLUMN,)
#: Up to how many raw batches a table's changed rows are read through a filter on them (``_TableRun._changed``).
MAX_FILTERED_BATCHES = 1_000
_ORIGIN = "_cdp_origin"  # 0: a row of this run's batch; 1: a row already in the table.
_DELETED = "_cdp_deleted"
_BATCH_ROWS = "_cdp_batch_rows"  # How many of this run's rows share the key.
_TABLE_ROWS = "_cdp_table_rows"  # How many of the table's rows share the key.


class TransformRunError(CdpError):
    """A transform could not run or commit: the message names the tenant, the table and what to do."""


class TransformBusyError(TransformRunError):
    """Another run holds the tenant's transform lease."""


class TransformSchemaError(TransformRunError):
    """The output's columns changed in a way the table cannot take without a full refresh."""


# -- the summary ----------------------------------------------------------------------------------------------------


@dataclass
class QualityReport:
    """One table's quality figures for one run."""

    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    nulled: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> reason kind -> values
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rejected_by_rule": self.rejected_by_rule, "nulled": self.nulled, "counters": self.counters}


@dataclass
class TableSummary:
    """What one transform did for one tenant.

    ``status``: ``committed``, ``up to date`` (nothing new: no commit), ``no input`` (nothing landed yet),
    ``failed`` (``error`` says why; nothing committed) or ``skipped`` (an input table failed in this run).
    Counts conserve: ``rows_in = rows_out + rejected + erased + merged``.
    """

    tenant: str
    table: str
    transform: str
    status: str
    mode: str = ""
    raw_files: int = 0
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    erased: int = 0
    merged: int = 0
    deleted: int = 0
    snapshot_id: int | None = None
    seconds: float = 0.0
    quality: QualityReport = field(default_factory=QualityReport)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "table": self.table,
            "transform": self.transform,
            "status": self.status,
            "mode": self.mode,
            "raw_files": self.raw_files,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "erased": self.erased,
            "merged": self.merged,
            "deleted": self.deleted,
            "snapshot_id": self.snapshot_id,
            "skipped": self.status in ("up to date", "no input"),
            "seconds": round(self.seconds, 3),
            "quality": self.quality.as_dict(),
            "error": self.error,
        }


@dataclass
class RunSummary:
    """Every table of every tenant of one run, and where each tenant's quality report was stored."""

    run_id: str
    started_at: datetime
    full_refresh: bool
    tables: list[TableSummary] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(table.status in ("failed", "skipped") for table in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "full_refresh": self.full_refresh,
            "ok": self.ok,
            "tables": [table.as_dict() for table in self.tables],
            "reports": self.reports,
        }


Progress = Callable[[TableSummary], None]


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every transform of one tenant's run shares."""

    spark_master: str | None
    tenant: str
    run_id: str
    started_at: datetime
    full_refresh: bool
    catalog: SqlCatalog
    raw_store: ObjectStore
    dlq_store: ObjectStore
    registry: SchemaRegistry
    settings: TransformSettings

    @cached_property
    def spark(self) -> SparkSession:
        """Started on first use: a run that finds every table up to date (a schedule with nothing new) starts no
        JVM, which takes 8 s on an idle machine and several times that on a busy one."""
        from plugins.transforms.spark import spark_session

        return spark_session(self.spark_master)

    @cached_property
    def tombstones(self) -> DataFrame | None:
        """The tenant's erasure tombstones; None when it has erased nobody."""
        from plugins.transforms.erasure import ERASURES_TABLE, read_tombstones

        identifier = table_identifier(self.tenant, ERASURES_TABLE)
        if not self.catalog.table_exists(identifier):
            return None
        table = self.catalog.load_table(identifier)
        if table.current_snapshot() is None or not live_data_files(table):
            return None
        return read_tombstones(self.spark, table).cache()


def run_transforms(
    *,
    tenants: Sequence[str] | None = None,
    tables: Sequence[str] | None = None,
    full_refresh: bool = False,
    spark_master: str | None = None,
    raw_url: str | None = None,
    processed_url: str | None = None,
    catalog_url: str | None = None,
    dlq_url: str | None = None,
    registry_url: str | None = None,
    settings: TenantSettings | TransformSettings | None = None,
    transforms: Sequence[TransformDescriptor] | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run the transforms (all registered ones, or ``transforms``) for ``tenants`` (default: every tenant of the raw
    zone), restricted to the output ``tables`` if given. See the module doc and docs/transforms.md."""
    from schema_registry import SchemaRegistry

    tenant_settings = settings if isinstance(settings, TenantSettings) else TenantSettings.resolve(base=settings)
    ordered = order_transforms(transforms) if transforms is not None else _registered_transforms()
    if tables:
        known = {descriptor.output for descriptor in ordered}
        if unknown := sorted(set(tables) - known):
            raise TransformRunError(
                f"no transform writes table(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        ordered = [descriptor for descriptor in ordered if descriptor.output in tables]
    raw_store = ObjectStore(resolve_zone_url(Zone.RAW, raw_url), setting="raw_url")
    dlq_store = ObjectStore(resolve_zone_url(Zone.DLQ, dlq_url), setting="dlq_url")
    registry = SchemaRegistry(ObjectStore(resolve_zone_url(Zone.REGISTRY, registry_url), setting="registry_url"))
    zone = ProcessedZone.resolve(processed_url, catalog_url)
    zone_store = ObjectStore(zone.warehouse, setting="processed_url")
    chosen = list(tenants) if tenants else raw_tenants(raw_store)
    for tenant in chosen:
        table_identifier(tenant, "customers")  # Checks the tenant's name before anything starts.
    summary = RunSummary(run_id=uuid.uuid4().hex, started_at=datetime.now(UTC), full_refresh=full_refresh)
    if not chosen:
        return summary
    catalog = zone.open()
    leases = LeaseManager(zone_store, LEASE_PREFIX, run_id=summary.run_id)
    for tenant in chosen:
        lease = leases.acquire(f"tenant {tenant}")
        if isinstance(lease, LeaseBusy):
            raise TransformBusyError(
                f"{lease.describe(datetime.now(UTC))}: another transform run is working on it; wait for it to "
                "finish (a killed run frees it when its process is gone, or when its lease expires on another host)"
            )
        heartbeat = _Heartbeat(lease)
        try:
            context = _Context(
                spark_master=spark_master,
                tenant=tenant,
                run_id=summary.run_id,
                started_at=summary.started_at,
                full_refresh=full_refresh,
                catalog=catalog,
                raw_store=raw_store,
                dlq_store=dlq_store,
                registry=registry,
                settings=tenant_settings.for_tenant(tenant),
            )
            done = _run_tenant(context, ordered, heartbeat, progress)
            summary.tables.extend(done)
            summary.reports[tenant] = _store_report(zone_store, context, done)
        finally:
            heartbeat.release()
    log_event(logger, "transforms_finished", run_id=summary.run_id, tables=len(summary.tables), ok=summary.ok)
    return summary


class _Heartbeat:
    """Renews a held lease every third of its TTL while a tenant's transforms run (a Spark job may outlast the TTL);
    the runner also renews it before each commit. A renewal that finds the lease taken over is kept and raised at
    the next :meth:`ensure_held`."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.lost: LeaseLostError | None = None
        self.thread = threading.Thread(target=self._beat, name=f"lease-{lease.name}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        interval = max(self.lease.ttl.total_seconds() / 3, 1.0)
        while not self.stopping.wait(interval):
            with self.lock:
                try:
                    self.lease.ensure_held()
                except LeaseLostError as exc:
                    self.lost = exc
                    return

    def ensure_held(self) -> None:
        with self.lock:
            if self.lost is not None:
                raise self.lost
            self.lease.ensure_held()

    def release(self) -> None:
        self.stopping.set()
        self.thread.join()
        with self.lock:
            if self.lost is None:
                self.lease.release()


def _registered_transforms() -> list[TransformDescriptor]:
    from plugins.manager import transforms

    return transforms()


def raw_tenants(store: ObjectStore) -> list[str]:
    """The tenants of a raw zone: its top-level folders with a valid tenant name."""
    from plugins.core.layout import validate_name

    found: set[str] = set()
    for info in store.iter_objects():
        tenant = info.key.split("/", 1)[0]
        if tenant in found or "/" not in info.key:
            continue
        try:
            found.add(validate_name("tenant", tenant))
        except CdpError:
            continue
    return sorted(found)


def _run_tenant(
    context: _Context, ordered: Sequence[TransformDescriptor], lease: _Heartbeat, progress: Progress | None
) -> list[TableSummary]:
    done: list[TableSummary] = []
    broken: set[str] = set()
    for descriptor in ordered:
        started = time.monotonic()
        upstream = {source.table for source in descriptor.inputs if isinstance(source, TableInput)}
        if failed := sorted(upstream & broken):
            result = TableSummary(
                context.tenant,
                descriptor.output,
                descriptor.name,
                "skipped",
                error=f"its input table(s) {', '.join(failed)} failed in this run",
            )
            broken.add(descriptor.output)
        else:
            try:
                result = _TableRun(context, descriptor, lease).run()
            except (SparkSessionError, NoUsableJavaError):
                raise  # Spark starts with the first table that has work; if it cannot, no table can: one error.
            except CdpError as exc:
                result = TableSummary(context.tenant, descriptor.output, descriptor.name, "failed", error=str(exc))
                broken.add(descriptor.output)
                log_event(
                    logger,
                    "transform_failed",
                    level=logging.ERROR,
                    tenant=context.tenant,
                    table=descriptor.output,
                    error=str(exc),
                )
        result.seconds = time.monotonic() - started
        done.append(result)
        if progress is not None:
            progress(result)
    return done


def _store_report(store: ObjectStore, context: _Context, done: Sequence[TableSummary]) -> str:
    """The tenant's quality report as JSON under the processed zone: ``_reports/{tenant}/{run_id}.json``."""
    key = f"{REPORTS_PREFIX}/{context.tenant}/{context.run_id}.json"
    report = {
        "tenant": context.tenant,
        "run_id": context.run_id,
        "started_at": context.started_at.isoformat(),
        "full_refresh": context.full_refresh,
        "tables": [table.as_dict() for table in done],
    }
    store.write_bytes(key, orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return store.url_for(key)


# -- one table ------------------------------------------------------------------------------------------------------


def input_snapshots(table: Table) -> dict[str, int]:
    """The upstream snapshot each table input was read at, as the output's latest snapshot with the record says."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if INPUT_SNAPSHOTS_PROPERTY in summary:
            recorded: dict[str, int] = orjson.loads(summary[INPUT_SNAPSHOTS_PROPERTY])
            return recorded
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return {}


def recorded_property(table: Table, name: str) -> str | None:
    """The property ``name`` a transform recorded with the table's current snapshot (``TransformOutput.properties``),
    or None. A maintenance snapshot changes no row: it carries its parent's."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if MAINTENANCE_PROPERTY not in summary:
            return summary.get(f"{TRANSFORM_PROPERTY_PREFIX}{name}")
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return None


def pending_inputs(
    descriptor: TransformDescriptor,
    output: Table | None,
    *,
    registry: SchemaRegistry,
    raw_store: ObjectStore,
    tenant: str,
    full_refresh: bool = False,
) -> dict[RawInput, list[RawFile]]:
    """The raw files each raw input of ``descriptor`` reads in a run: those ``output`` has not processed (all of them
    on a full refresh). Subjects without a registered schema (nothing ever landed) and inputs with no files are left
    out."""
    from schema_registry import subject_name

    processed = processed_raw_files(output) if output is not None and not full_refresh else frozenset()
    found: dict[RawInput, list[RawFile]] = {}
    for source in descriptor.inputs:
        if not isinstance(source, RawInput):
            continue
        if not registry.all_versions(subject_name(tenant, source.provider, source.stream)):
            continue
        if full_refresh:
            files = list_raw_files(raw_store, tenant, source.provider, source.stream)
        else:
            files = pending_raw_files(raw_store, tenant, source.provider, source.stream, processed)
        if files:
            found[source] = files
    return found


@dataclass(frozen=True)
class TableStatus:
    """Where one transform's table of a tenant stands: its current snapshot, and what a run would read."""

    transform: TransformDescriptor
    snapshot_id: int | None
    pending_raw_files: int
    changed_inputs: tuple[str, ...]


def transform_status(
    tenant: str,
    *,
    transforms: Sequence[TransformDescriptor] | None = None,
    raw_url: str | None = None,
    processed_url: str | None = None,
    catalog_url: str | None = None,
    registry_url: str | None = None,
) -> list[TableStatus]:
    """Each transform's table of ``tenant`` in run order (no Spark: the catalog and the raw zone's listing)."""
    from schema_registry import SchemaRegistry

    table_identifier(tenant, "customers")
    ordered = order_transforms(transforms) if transforms is not None else _registered_transforms()
    registry = SchemaRegistry(ObjectStore(resolve_zone_url(Zone.REGISTRY, registry_url), setting="registry_url"))
    raw_store = ObjectStore(resolve_zone_url(Zone.RAW, raw_url), setting="raw_url")
    catalog = ProcessedZone.resolve(processed_url, catalog_url).open()

    def load(name: str) -> Table | None:
        identifier = table_identifier(tenant, name)
        return catalog.load_table(identifier) if catalog.table_exists(identifier) else None

    found = []
    for descriptor in ordered:
        output = load(descriptor.output)
        pending = pending_inputs(descriptor, output, registry=registry, raw_store=raw_store, tenant=tenant)
        recorded = input_snapshots(output) if output is not None else {}
        changed = tuple(
            source.table
            for source in descriptor.inputs
            if isinstance(source, TableInput)
            and (snapshot := _current_snapshot_id(load(source.table))) is not None
            and recorded.get(source.table) != snapshot
        )
        found.append(
            TableStatus(descriptor, _current_snapshot_id(output), sum(len(f) for f in pending.values()), changed)
        )
    return found


def _current_snapshot_id(table: Table | None) -> int | None:
    snapshot = table.current_snapshot() if table is not None else None
    return snapshot.snapshot_id if snapshot is not None else None


class _TableRun:
    """One transform for one tenant: read, call, then erasure, rules, merge, write and commit."""

    def __init__(self, context: _Context, descriptor: TransformDescriptor, lease: _Heartbeat) -> None:
        self.context = context
        self.descriptor = descriptor
        self.lease = lease
        self.name = f"{context.tenant}.{descriptor.output}"
        self.table = self._load(descriptor.output)
        self.raw_inputs = [source for source in descriptor.inputs if isinstance(source, RawInput)]
        self.table_inputs = [source for source in descriptor.inputs if isinstance(source, TableInput)]
        self.upstream = {source.table: self._load(source.table) for source in self.table_inputs}
        self.counters: dict[str, int] = {}

    def _load(self, name: str) -> Table | None:
        identifier = table_identifier(self.context.tenant, name)
        catalog = self.context.catalog
        return catalog.load_table(identifier) if catalog.table_exists(identifier) else None

    def _summary(self, status: str, **fields: Any) -> TableSummary:
        return TableSummary(self.context.tenant, self.descriptor.output, self.descriptor.name, status, **fields)

    # -- inputs --

    def _pending(self) -> dict[RawInput, list[RawFile]]:
        context = self.context
        return pending_inputs(
            self.descriptor,
            self.table,
            registry=context.registry,
            raw_store=context.raw_store,
            tenant=context.tenant,
            full_refresh=context.full_refresh,
        )

    def _read_raw(self, source: RawInput, files: Sequence[RawFile]) -> DataFrame:
        context = self.context
        schema = subject_struct(context.registry, context.tenant, source.provider, source.stream)
        return read_raw(context.spark, context.raw_store, [raw.key for raw in files], schema)

    def _table_frame(self, name: str) -> DataFrame | None:
        table = self.upstream.get(name) if name in self.upstream else self._load(name)
        if table is None or table.current_snapshot() is None:
            return None
        return read_table(self.context.spark, table).drop(DATA_FILE_COLUMN)

    def _recorded(self, name: str) -> str | None:
        return recorded_property(self.table, name) if self.table is not None else None

    def _changed(self, name: str, recorded: Mapping[str, int]) -> DataFrame | None:
        """The rows of the files added to input table ``name`` since this output last read it."""
        table = self.upstream.get(name)
        if table is None or table.current_snapshot() is None:
            return None
        since = recorded.get(name)
        if self.context.full_refresh or since is None or table.snapshot_by_id(since) is None:
            return read_table(self.context.spark, table).drop(DATA_FILE_COLUMN)
        added = sorted(set(live_data_files(table)) - set(live_data_files(table, since)))
        rows = read_data_files(self.context.spark, table, added).drop(DATA_FILE_COLUMN)
        new_raw_files = processed_raw_files(table) - processed_raw_files(table, since)
        if SOURCE_FILE_COLUMN not in rows.columns or not new_raw_files:
            return rows
        # A merge rewrites whole files, so most rows of an added file were there before: the rows that changed are
        # those whose raw batch the input processed since (the benchmark's 1% run otherwise recomputed every profile).
        from pyspark.sql import functions as F

        batches = sorted(new_raw_files)
        if len(batches) <= MAX_FILTERED_BATCHES:
            # A filter the Parquet reader applies: it skips the merge's copies of untouched rows without decoding them
            # (their row groups' dictionaries name none of these batches).
            return rows.where(F.col(SOURCE_FILE_COLUMN).isin(batches))
        # pyspark builds the filter value by value (a few tenths of a millisecond each: 7.6 s for 20,000 batches); a
        # join on a list sent to every task is built at once, though the reader then decodes every row.
        listed = self.context.spark.createDataFrame([(key,) for key in batches], [SOURCE_FILE_COLUMN])
        return rows.join(F.broadcast(listed), SOURCE_FILE_COLUMN, "left_semi")

    # -- the run --

    def run(self) -> TableSummary:
        context = self.context
        recorded = input_snapshots(self.table) if self.table is not None and not context.full_refresh else {}
        current = {name: _current_snapshot_id(table) for name, table in self.upstream.items()}
        pending = self._pending()
        changed_inputs = [
            name for name, snapshot in current.items() if snapshot is not None and recorded.get(name) != snapshot
        ]
        has_output = self.table is not None and self.table.current_snapshot() is not None
        if not pending and not changed_inputs:
            if has_output and not context.full_refresh:
                return self._summary("up to date", snapshot_id=_current_snapshot_id(self.table))
            if not any(snapshot is not None for snapshot in current.values()):
                return self._summary("no input")
        arguments: dict[str, Any] = {source.keyword: None for source in self.raw_inputs}
        for source, files in pending.items():
            arguments[source.keyword] = self._read_raw(source, files)
        for upstream in self.table_inputs:
            arguments[upstream.table] = self._table_frame(upstream.table)
        function = self.descriptor.load_function()
        if "run" in inspect.signature(function).parameters:
            arguments["run"] = TransformRun(
                spark=context.spark,
                tenant=context.tenant,
                run_id=context.run_id,
                started_at=context.started_at,
                full_refresh=context.full_refresh,
                catalog=context.catalog,
                settings=context.settings,
                table=self._table_frame,
                changed=lambda name: self._changed(name, recorded),
                counters=self.counters,
                recorded=self._recorded,
            )
        result = function(**arguments)
        output = result if isinstance(result, TransformOutput) else TransformOutput(rows=result)
        complete = (
            context.full_refresh or output.complete or (not isinstance(result, TransformOutput) and not self.raw_inputs)
        )
        raw_keys = [raw.key for files in pending.values() for raw in files]
        given = output.properties.items()
        if untyped := sorted(
            str(name) for name, value in given if not (isinstance(name, str) and isinstance(value, str))
        ):
            raise TransformRunError(
                f"table {self.name}: snapshot properties are text; give a string name and value for "
                f"{', '.join(untyped)}"
            )
        properties = {
            **{f"{TRANSFORM_PROPERTY_PREFIX}{name}": value for name, value in given},
            INPUT_SNAPSHOTS_PROPERTY: orjson.dumps({k: v for k, v in current.items() if v is not None}).decode(),
        }
        summary = self._write(output, complete=complete, raw_keys=raw_keys, properties=properties)
        summary.raw_files = len(raw_keys)
        return summary

    # -- after the function: identically for every table --

    def _merge_order(self, columns: Sequence[str]) -> list[Column]:
        from pyspark.sql import functions as F

        custom = self.descriptor.load_merge_order()
        if custom is not None:
            return list(custom())
        order = []
        if "updated_at" in columns:
            order.append(F.col("updated_at").desc_nulls_last())
        if SOURCE_FILE_COLUMN in columns:
            order.append(F.col(SOURCE_FILE_COLUMN).desc_nulls_last())
        return order

    def _write(
        self, output: TransformOutput, *, complete: bool, raw_keys: Sequence[str], properties: dict[str, str]
    ) -> TableSummary:
        from pyspark import StorageLevel
        from pyspark.sql import Window
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        from plugins.transforms.erasure import ERASED_COLUMN, mark_erased
        from plugins.transforms.frames import broadcast_if, is_few, latest_per_key
        from plugins.transforms.normalize import REASON_PREFIX
        from plugins.transforms.quality import (
            BROKEN_RULE_COLUMN,
            mark_broken_rules,
            reason_counts,
            rejected_rows,
            write_rejected,
        )

        context, key = self.context, list(self.descriptor.key)
        rows = output.rows
        if missing := [name for name in key if name not in rows.columns]:
            raise TransformRunError(f"table {self.name}: the output lacks its key column(s) {', '.join(missing)}")
        columns = [name for name in rows.columns if not name.startswith("_cdp_") or name in LINEAGE_COLUMNS]
        table = self._prepare_table(StructType([rows.schema[name] for name in columns]))
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        marked: DataFrame | None = None
        touched: DataFrame | None = None
        dropped: pa.Table | None = None  # The touched keys, when few: the rows the copies leave out.
        whole_rows: DataFrame | None = None  # When the fold read only the table rows' deciding columns: all of them.
        try:
            live = live_data_files(table)
            batch = rows.withColumn(_ORIGIN, F.lit(0))
            copy_untouched = False  # Whether the affected files' rows of untouched keys are copied apart.
            folding = True  # Whether keys may repeat among the candidates, so the fold below must pick one row each.
            if complete:
                affected, candidates = sorted(live), batch
                # A complete output is often one row per key already (an aggregation's): checked on the key columns
                # alone, since the fold would shuffle and sort whole rows. The rows are persisted: computed once.
                folding = bool(rows.groupBy(*key).count().where(F.col("count") > 1).limit(1).collect())
            else:
                keys = rows.select(*key)
                if output.deleted_keys is not None:
                    keys = keys.unionByName(output.deleted_keys.select(*key))
                touched = _renamed_keys(keys, key).distinct().persist(StorageLevel.MEMORY_AND_DISK)
                # Few keys, an incremental run's usual case: every task gets them all, so finding the files and
                # splitting their rows shuffle none of the table's rows; only the touched keys' rows are folded.
                few = bool(live) and is_few(touched)
                wanted = broadcast_if(touched, few)
                if few:
                    dropped = touched.toDF(*key).toArrow()
                    # Bucketed by the key (customers by customer_id): the manifests name the files, none is read.
                    in_partitions = files_in_partitions_of(table, dropped)
                    affected = self._files_holding(table, wanted, key) if in_partitions is None else in_partitions
                else:
                    affected = self._files_holding(table, wanted, key) if live else []
                existing = read_data_files(context.spark, table, affected).drop(DATA_FILE_COLUMN)
                existing = existing.withColumn(_ORIGIN, F.lit(1))
                if affected and few:
                    # Only the touched keys' rows are folded; the files' other rows are copied as they are (below),
                    # as the fold, erasure and rules would keep them: no row of this run shares their key, none of
                    # their keys is deleted, and only this run's rows are judged.
                    copy_untouched = True
                    if not self.raw_inputs:
                        # A row recomputed from tables replaces the table's row of its key, and a touched key without
                        # one is deleted: the table's rows never win, so only their keys are read (to count them).
                        existing = existing.select(*key, _ORIGIN)
                    elif self.descriptor.load_merge_order() is None:
                        # The table's row of a key wins only over an older version (late data: rare). The default
                        # order's columns decide, so the fold reads those alone; the winners are read whole below.
                        whole_rows = existing
                        deciding = [name for name in ("updated_at", SOURCE_FILE_COLUMN) if name in existing.columns]
                        existing = existing.select(*key, *deciding, _ORIGIN)
                    existing = existing.join(wanted, _same_key(existing, key), "left_semi")
                candidates = batch.unionByName(existing, allowMissingColumns=True)
            # This run's rows per key, summed over the winners below: the rows in, without a job of their own (the
            # window is partitioned like the fold's, by the key).
            if folding:
                same_key = Window.partitionBy(*key)
                candidates = candidates.withColumns(
                    {
                        _BATCH_ROWS: F.count(F.when(F.col(_ORIGIN) == 0, F.lit(1))).over(same_key),
                        _TABLE_ROWS: F.count(F.when(F.col(_ORIGIN) == 1, F.lit(1))).over(same_key),
                    }
                )
                merge_order = self._merge_order(candidates.columns)
                # A transform reading raw data keeps the latest version of a key, whichever run brought it; one
                # reading tables recomputed its rows from their current state, so its new rows replace the table's.
                origin = F.col(_ORIGIN).asc()
                order = [*merge_order, origin] if self.raw_inputs else [origin, *merge_order]
                folded = latest_per_key(candidates, key, order)
            else:  # Every row is its key's only one, from this run.
                folded = candidates.withColumns({_BATCH_ROWS: F.lit(1), _TABLE_ROWS: F.lit(0)})
            if output.deleted_keys is not None:
                marks = _renamed_keys(output.deleted_keys, key).distinct().withColumn(_DELETED, F.lit(True))
                folded = folded.join(marks, _same_key(folded, key), "left").drop(*_key_aliases(key))
            else:
                folded = folded.withColumn(_DELETED, F.lit(None).cast("boolean"))
            winners = folded.withColumn(_DELETED, F.coalesce(F.col(_DELETED), F.lit(False)))
            # Erasure and the quality rules judge this run's surviving rows; the table's own rows stay as they are.
            fresh = (F.col(_ORIGIN) == 0) & ~F.col(_DELETED)
            if context.tombstones is not None and self.descriptor.erasure_keys:
                winners = mark_erased(winners, context.tombstones, self.descriptor.erasure_keys)
                winners = winners.withColumn(ERASED_COLUMN, F.col(ERASED_COLUMN) & fresh)
            else:
                winners = winners.withColumn(ERASED_COLUMN, F.lit(False))
            rules = self.descriptor.load_quality_rules()
            marked = mark_broken_rules(winners, rules)
            judged = fresh & ~F.col(ERASED_COLUMN)
            marked = marked.withColumn(BROKEN_RULE_COLUMN, F.when(judged, F.col(BROKEN_RULE_COLUMN)))
            marked = marked.persist(StorageLevel.MEMORY_AND_DISK)
            # Every count of the run in one aggregation (one job): rows in, winners by origin, deleted, erased and
            # rejected per rule.
            outcomes = marked.groupBy(_ORIGIN, _DELETED, ERASED_COLUMN, BROKEN_RULE_COLUMN).agg(
                F.count(F.lit(1)).alias("rows"),
                F.sum(_BATCH_ROWS).alias("batch_rows"),
                F.sum(_TABLE_ROWS).alias("table_rows"),
            )
            batch_rows = new_winners = existing_kept = deleted_count = erased_count = rejected_count = 0
            table_rows = 0  # The table's rows of the keys this run touched, whichever version wins.
            quality = QualityReport(counters=dict(self.counters))
            for outcome in outcomes.collect():
                count = int(outcome["rows"])
                batch_rows += int(outcome["batch_rows"] or 0)
                table_rows += int(outcome["table_rows"] or 0)
                if outcome[_DELETED]:
                    deleted_count += count if outcome[_ORIGIN] == 1 else 0
                    continue
                if outcome[_ORIGIN] == 1:
                    existing_kept += count
                    continue
                new_winners += count
                if outcome[ERASED_COLUMN]:
                    erased_count += count
                elif outcome[BROKEN_RULE_COLUMN] is not None:
                    rule = rules[int(outcome[BROKEN_RULE_COLUMN])].name
                    quality.rejected_by_rule[rule] = quality.rejected_by_rule.get(rule, 0) + count
                    rejected_count += count
            rejected = rejected_rows(marked, rules).collect() if rejected_count else []
            if len(rejected) != rejected_count:
                raise TransformRunError(
                    f"table {self.name}: {rejected_count} rows broke a rule but {len(rejected)} were read back; "
                    "nothing committed"
                )
            if copy_untouched and not self.raw_inputs and existing_kept:
                raise TransformRunError(  # Their rows were not read: never commit them as nulls.
                    f"table {self.name}: {existing_kept} rows already in the table won over this run's; "
                    "nothing committed"
                )
            rows_out = new_winners - erased_count - rejected_count
            nulled = reason_counts(rows).collect() if any(n.startswith(REASON_PREFIX) for n in rows.columns) else []
            for row in nulled:
                quality.nulled.setdefault(str(row["column"]), {})[str(row["reason"])] = int(row["rows"])
            kept = ~F.col(_DELETED) & ~F.col(ERASED_COLUMN) & F.col(BROKEN_RULE_COLUMN).isNull()
            to_write = marked.where(kept).select(*columns)
            if whole_rows is not None and existing_kept:
                # The table's rows that won, read whole (one per key, as the fold would pick among duplicates).
                won = _renamed_keys(marked.where(kept & (F.col(_ORIGIN) == 1)).select(*key), key)
                again = whole_rows.join(F.broadcast(won), _same_key(whole_rows, key), "left_semi")
                won_rows = latest_per_key(again, key, self._merge_order(again.columns)).select(*columns)
                to_write = marked.where(kept & (F.col(_ORIGIN) == 0)).select(*columns).unionByName(won_rows)
            expected = existing_kept + rows_out
            if rejected:  # Before the commit: a crash after it re-rejects them (a duplicate), never loses them.
                write_rejected(
                    context.dlq_store, context.tenant, self.descriptor.output, rejected, run_id=context.run_id
                )
            files = write_data_files(to_write, table, run_id=context.run_id) if expected else []
            if copy_untouched and dropped is not None:
                files = sorted(
                    rewrite_keeping_rows(context.spark, table, affected, files, dropped, run_id=context.run_id)
                )
                # Counted apart from the copies, which _check then verifies: the affected files' rows but the
                # touched keys' ones.
                expected += sum(live[path].record_count for path in affected) - table_rows
            # Keys unique: the fold keeps one row each; without a fold the check above has found them unique already.
            self._check(table, files, to_write, key, expected, unique=complete and folding)
            counts = {
                "rows_in": batch_rows,
                "rows_out": rows_out,
                "rejected": rejected_count,
                "erased": erased_count,
                "merged": batch_rows - new_winners,
                "deleted": deleted_count,
            }
            properties[RUN_ID_PROPERTY] = context.run_id
            properties.update(
                {f"{COUNT_PROPERTY_PREFIX}{name.replace('_', '-')}": str(n) for name, n in counts.items()}
            )
            properties[QUALITY_PROPERTY] = orjson.dumps(quality.as_dict()).decode()
            self.lease.ensure_held()  # A run that stalled past its lease stops here instead of racing its successor.
            committed = commit_files(table, add=files, remove=affected, raw_files=raw_keys, properties=properties)
        finally:
            rows.unpersist()
            for frame in (marked, touched):
                if frame is not None:
                    frame.unpersist()
        mode = "full-refresh" if context.full_refresh else ("complete" if complete else "incremental")
        log_event(
            logger,
            "transform_committed",
            tenant=context.tenant,
            table=self.descriptor.output,
            mode=mode,
            snapshot_id=committed.snapshot_id,
            **counts,
        )
        return self._summary("committed", mode=mode, snapshot_id=committed.snapshot_id, quality=quality, **counts)

    def _files_holding(self, table: Table, wanted: DataFrame, key: Sequence[str]) -> list[str]:
        """The table's live data files holding any of the ``wanted`` keys (:func:`_renamed_keys`), reading only the
        key columns."""
        live = sorted(live_data_files(table))
        located = read_data_files(self.context.spark, table, live).select(*key, DATA_FILE_COLUMN)
        found = located.join(wanted, _same_key(located, key), "left_semi").select(DATA_FILE_COLUMN).distinct()
        return sorted(str(row[DATA_FILE_COLUMN]) for row in found.collect())

    def _check(
        self, table: Table, files: Sequence[str], written: DataFrame, key: Sequence[str], expected: int, *, unique: bool
    ) -> None:
        """Before committing: the files hold exactly the rows meant for them, and (replacing the table) keys are
        unique. A failed check commits nothing."""
        from pyspark.sql import functions as F

        found = sum(data_file(table.io, table.metadata, path).record_count for path in files)
        if found != expected:
            raise TransformRunError(
                f"table {self.name}: the written files hold {found} rows, the output {expected}; nothing committed"
            )
        if unique and expected:
            duplicate = written.groupBy(*key).count().where(F.col("count") > 1).limit(1).collect()
            if duplicate:
                values = ", ".join(f"{name}={duplicate[0][name]!r}" for name in key)
                raise TransformRunError(
                    f"table {self.name}: key {values} is not unique in the output ({duplicate[0]['count']} rows); "
                    "nothing committed"
                )

    def _prepare_table(self, struct: StructType) -> Table:
        """The output table, created on first use; an added column evolves it, any other change fails (or, on a full
        refresh, recreates the table with the output's schema)."""
        from pyspark.sql.types import StructField, StructType

        context = self.context
        nullable = StructType([StructField(f.name, f.dataType, True, f.metadata) for f in struct.fields])
        if self.table is not None:
            problem = schema_change(table_struct(self.table), nullable)
            if problem is None:
                self.table = _add_columns(self.table, table_struct(self.table), nullable)
                return self.table
            if not context.full_refresh:
                raise TransformSchemaError(
                    f"table {self.name}: {problem}; run 'cdp transform run --full-refresh --tenant "
                    f"{context.tenant} --table {self.descriptor.output}' to rebuild it with the new schema"
                )
            # A full refresh rebuilds the table from all raw data anyway: it starts over with the new schema.
            context.catalog.drop_table(table_identifier(context.tenant, self.descriptor.output))
        self.table = create_table(
            context.catalog, context.tenant, self.descriptor.output, nullable, self.descriptor.partitioning
        )
        return self.table


def _key_aliases(key: Sequence[str]) -> list[str]:
    return [f"_cdp_key_{index}" for index in range(len(key))]


def _renamed_keys(frame: DataFrame, key: Sequence[str]) -> DataFrame:
    """The key columns of ``frame`` under names of their own, for :func:`_same_key`."""
    from pyspark.sql import functions as F

    return frame.select(*[F.col(name).alias(alias) for name, alias in zip(key, _key_aliases(key), strict=True)])


def _same_key(frame: DataFrame, key: Sequence[str]) -> Column:
    """``frame``'s key equals the renamed key, null-safely: a null key part is a value (``customer_metrics`` keys a
    customer without orders by a null currency), the same as the window that keeps one row per key treats it."""
    from functools import reduce

    from pyspark.sql import functions as F

    pairs = [frame[name].eqNullSafe(F.col(alias)) for name, alias in zip(key, _key_aliases(key), strict=True)]
    return reduce(lambda left, right: left & right, pairs)


def schema_change(current: StructType, wanted: StructType) -> str | None:
    """Why ``wanted`` (the output's columns) cannot evolve ``current`` (the table's) by adding columns, or None."""
    have = {f.name: f.dataType.simpleString() for f in current.fields}
    for field_ in wanted.fields:
        if field_.name in have and have[field_.name] != field_.dataType.simpleString():
            return f"column {field_.name} changed type from {have[field_.name]} to {field_.dataType.simpleString()}"
    names = set(wanted.fieldNames())
    for name in have:
        if name not in names:
            return f"column {name} is no longer in the output"
    return None


def _add_columns(table: Table, current: StructType, wanted: StructType) -> Table:
    """``table`` with the columns of ``wanted`` it lacks added (nullable: older rows have none)."""
    from pyiceberg.table import TableProperties
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    added = [f for f in wanted.fields if f.name not in current.fieldNames()]
    if not added:
        return table
    with table.transaction() as transaction:
        with transaction.update_schema() as update:
            update.union_by_name(to_arrow_schema(StructType(added), timezone="UTC"))
        mapping = transaction.table_metadata.schema().name_mapping.model_dump_json()
        transaction.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping})
    log_event(logger, "table_schema_evolved", table=".".join(table.name()), added=[f.name for f in added])
    return table


__all__ = [
    "QualityReport",
    "RunSummary",
    "TableStatus",
    "TableSummary",
    "TransformBusyError",
    "TransformRunError",
    "TransformSchemaError",
    "input_snapshots",
    "pending_inputs",
    "raw_tenants",
    "recorded_property",
    "run_transforms",
    "transform_status",
]
