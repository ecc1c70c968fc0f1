"""Segments in PostgreSQL: definitions, members, refreshes and the changes each refresh made (docs/segments.md).

Everything lives in the tenant's schema (the loaders' ``"acme"``), next to the ``customers`` table the members come
from. Four tables (:data:`SCHEMA_STATEMENTS`): ``segments`` (one row per definition, soft-deleted), ``segment_members``
(the current members and the refresh each entered in), ``segment_refreshes`` (one row per committed refresh) and
``segment_member_changes`` (who entered and who left in each refresh).

A refresh computes the members in one statement into a temporary table (PostgreSQL: the compiled ``members_query``;
the lake: the ids Spark found, COPYed in), then, in the same transaction, writes the changes against the previous
members, the members themselves, and the segment's ``size`` and ``last_refreshed``. A failing refresh therefore
leaves the previous members as they were, and a transaction-scoped advisory lock per (tenant, segment) makes two
refreshes of one segment run one after the other.

Functions take a psycopg connection; open it in autocommit mode (:func:`connect`) so each function's transaction is
its own (inside a caller's transaction they become savepoints, and the caller's commit decides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from typing import TYPE_CHECKING, Any, Literal

from psycopg import sql
from psycopg.types.json import Jsonb

from activators.segments.model import Segment, SegmentDefinitionError, SegmentType
from plugins.core.errors import CdpError
from plugins.core.events import log_event

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import Connection

    from activators.segments.fields import FieldCatalog

logger = logging.getLogger(__name__)

Engine = Literal["postgres", "lake"]
ENGINES: tuple[Engine, ...] = ("postgres", "lake")
#: Most segments ``overlap`` compares at once (2**N - 1 intersections are printed).
MAX_OVERLAP_SEGMENTS = 8
#: The temporary table a refresh computes its members into (dropped at commit).
_REFRESH_MEMBERS = "cdp_segment_refresh_members"


class SegmentStoreError(CdpError):
    """A segment operation the store cannot do; the message says why and what to do."""


class SegmentNotFoundError(SegmentStoreError, LookupError):
    """No (undeleted) segment has that name in the tenant."""


class SegmentExistsError(SegmentStoreError):
    """``create`` of a name that is taken (``apply`` updates instead)."""


class StaticSegmentFrozenError(SegmentStoreError):
    """A static segment's members were frozen by its first refresh: it is not refreshed or redefined again."""


SCHEMA_STATEMENTS: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS {schema}.segments ("
    "name text PRIMARY KEY, description text NOT NULL DEFAULT '', type text NOT NULL, definition jsonb NOT NULL, "
    "currency text, refresh_frequency text, size bigint, last_refreshed timestamptz, last_refresh_id bigint, "
    "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), "
    "deleted_at timestamptz)",
    "CREATE TABLE IF NOT EXISTS {schema}.segment_refreshes ("
    "refresh_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, segment text NOT NULL, engine text NOT NULL, "
    "started_at timestamptz NOT NULL, finished_at timestamptz, size bigint, entered_count bigint, left_count bigint)",
    "CREATE INDEX IF NOT EXISTS segment_refreshes_segment ON {schema}.segment_refreshes (segment, refresh_id)",
    "CREATE TABLE IF NOT EXISTS {schema}.segment_members ("
    "segment text NOT NULL, customer_id text NOT NULL, refresh_id bigint NOT NULL, "
    "PRIMARY KEY (segment, customer_id))",
    "CREATE TABLE IF NOT EXISTS {schema}.segment_member_changes ("
    "refresh_id bigint NOT NULL, segment text NOT NULL, customer_id text NOT NULL, "
    "change text NOT NULL CHECK (change IN ('entered', 'left')), PRIMARY KEY (refresh_id, customer_id))",
)


@dataclass(frozen=True)
class StoredSegment:
    """A row of ``segments``: the definition and what its last refresh found."""

    name: str
    description: str
    type: SegmentType
    definition: Mapping[str, Any]
    currency: str | None
    refresh_frequency: str | None
    size: int | None
    last_refreshed: datetime | None
    last_refresh_id: int | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    @property
    def segment(self) -> Segment:
        """The definition as a :class:`Segment` (parsed again: the stored JSON is the source of truth)."""
        from activators.segments.model import parse_segment

        return parse_segment(self.definition, source=f"stored segment '{self.name}'")

    @property
    def frozen(self) -> bool:
        """A static segment after its first refresh."""
        return self.type is SegmentType.STATIC and self.last_refresh_id is not None

    def summary(self) -> dict[str, Any]:
        """Stable keys for ``--json``."""
        return {
            "name": self.name,
            "description": self.description,
            "type": self.type.value,
            "currency": self.currency,
            "refresh_frequency": self.refresh_frequency,
            "size": self.size,
            "last_refreshed": self.last_refreshed,
            "last_refresh_id": self.last_refresh_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class RefreshResult:
    """What one committed refresh did."""

    refresh_id: int
    segment: str
    size: int
    entered: int
    left: int
    seconds: float
    engine: Engine

    def summary(self) -> dict[str, Any]:
        return {
            "refresh_id": self.refresh_id,
            "segment": self.segment,
            "size": self.size,
            "entered": self.entered,
            "left": self.left,
            "seconds": round(self.seconds, 3),
            "engine": self.engine,
        }


@dataclass(frozen=True)
class ApplySummary:
    """What ``apply`` did per name; ``not_in_files``: stored segments the applied files do not define (kept)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_in_files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, list[str]]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "not_in_files": self.not_in_files,
        }


@dataclass(frozen=True)
class Preview:
    """A segment's size now and a few members (``customer_id``, ``email``), nothing stored."""

    size: int
    sample: list[dict[str, Any]]


@dataclass(frozen=True)
class LakeEngine:
    """Where the lake engine reads: the processed zone's Iceberg catalog and a Spark session."""

    zone: Any
    spark: Any

    def member_ids(self, segment: Segment, tenant: str) -> pa.Table:
        """The members' ids, one ``customer_id`` column (activators.segments.lake, imported only when asked)."""
        from activators.segments.lake import lake_member_ids

        return lake_member_ids(segment, tenant, self.zone, self.spark)


# -- connections and schema ----------------------------------------------------------------------------------------


def connect(url: str) -> Connection[Any]:
    """An autocommit connection (each store function then commits its own transaction)."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegmentStoreError(
            f"cannot connect to PostgreSQL: {first_line}; check --postgres-url or CDP_POSTGRES_URL"
        ) from None


def _schema(tenant: str) -> sql.Identifier:
    return sql.Identifier(tenant)


def _table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def _lock(conn: Connection[Any], key: str) -> None:
    """A transaction-scoped advisory lock on ``key`` (released at commit or rollback)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def _segment_lock_key(tenant: str, name: str) -> str:
    return f"cdp_segments:{tenant}:{name}"


#: What ensure_schema creates, checked first so that an existing schema costs one query and takes no lock (CREATE
#: INDEX IF NOT EXISTS locks its table even when the index exists, which would wait for a running refresh).
_SCHEMA_OBJECTS = (
    "segments",
    "segment_refreshes",
    "segment_refreshes_segment",
    "segment_members",
    "segment_member_changes",
)


def ensure_schema(conn: Connection[Any], tenant: str) -> None:
    """Create the tenant's schema and the four segment tables when missing (safe from two processes at once)."""
    row = conn.execute(
        "SELECT bool_and(to_regclass(format('%%I.%%I', %s::text, name)) IS NOT NULL) FROM unnest(%s::text[]) name",
        (tenant, list(_SCHEMA_OBJECTS)),
    ).fetchone()
    if row is not None and row[0]:
        return
    with conn.transaction():
        # CREATE ... IF NOT EXISTS is not safe against a concurrent create of the same name (a unique violation in
        # the catalog), hence the lock.
        _lock(conn, f"cdp_segments.ddl:{tenant}")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_schema(tenant)))
        for statement in SCHEMA_STATEMENTS:
            conn.execute(sql.SQL(statement).format(schema=_schema(tenant)))  # type: ignore[arg-type]


def field_catalog(conn: Connection[Any], tenant: str) -> FieldCatalog:
    """The fields the tenant's PostgreSQL tables have; a MissingTableError (one line: run cdp load run) when it has
    no ``customers`` table yet."""
    from activators.segments.fields import FieldCatalog

    catalog = FieldCatalog.from_postgres(conn, tenant)
    catalog.require_customers()
    return catalog


def check(segment: Segment, catalog: FieldCatalog) -> None:
    """``check_segment``, its one-line message naming the segment (SegmentDefinitionError)."""
    from activators.segments.model import check_segment

    try:
        check_segment(segment, catalog)
    except SegmentDefinitionError as exc:
        message = str(exc)
        if segment.name not in message:
            raise SegmentDefinitionError(f"segment '{segment.name}': {message}") from None
        raise


# -- definitions -----------------------------------------------------------------------------------------------------

_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(name)
    for name in (
        "name",
        "description",
        "type",
        "definition",
        "currency",
        "refresh_frequency",
        "size",
        "last_refreshed",
        "last_refresh_id",
        "created_at",
        "updated_at",
        "deleted_at",
    )
)


def _stored(row: Sequence[Any]) -> StoredSegment:
    return StoredSegment(
        name=row[0],
        description=row[1],
        type=SegmentType(row[2]),
        definition=row[3],
        currency=row[4],
        refresh_frequency=row[5],
        size=row[6],
        last_refreshed=row[7],
        last_refresh_id=row[8],
        created_at=row[9],
        updated_at=row[10],
        deleted_at=row[11],
    )


def _find(conn: Connection[Any], tenant: str, name: str, *, for_update: bool = False) -> StoredSegment | None:
    """The segment row (deleted or not), or None."""
    query = sql.SQL("SELECT {} FROM {} WHERE name = %s {}").format(
        _COLUMNS, _table(tenant, "segments"), sql.SQL("FOR UPDATE" if for_update else "")
    )
    row = conn.execute(query, (name,)).fetchone()
    return None if row is None else _stored(row)


def _not_found(tenant: str, name: str) -> SegmentNotFoundError:
    return SegmentNotFoundError(
        f"no segment '{name}' in tenant '{tenant}'; cdp segment list shows them, cdp segment apply adds them"
    )


def _has_tables(conn: Connection[Any], tenant: str) -> bool:
    """Whether the tenant's segment tables exist (reads create nothing)."""
    row = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, 'segments'))", (tenant,)).fetchone()
    return row is not None and row[0] is not None


def get(conn: Connection[Any], tenant: str, name: str) -> StoredSegment:
    """The segment ``name`` (SegmentNotFoundError when there is none or it was deleted)."""
    found = _find(conn, tenant, name) if _has_tables(conn, tenant) else None
    if found is None or found.deleted_at is not None:
        raise _not_found(tenant, name)
    return found


def list_segments(conn: Connection[Any], tenant: str) -> list[StoredSegment]:
    """Every segment not deleted, by name."""
    if not _has_tables(conn, tenant):
        return []
    query = sql.SQL("SELECT {} FROM {} WHERE deleted_at IS NULL ORDER BY name")
    rows = conn.execute(query.format(_COLUMNS, _table(tenant, "segments"))).fetchall()
    return [_stored(row) for row in rows]


def _definition(segment: Segment) -> dict[str, Any]:
    from activators.segments.model import segment_to_mapping

    return segment_to_mapping(segment)


def _write(conn: Connection[Any], tenant: str, segment: Segment, existing: StoredSegment | None) -> None:
    """Insert the definition, or replace a row; a deleted row comes back as a new segment (no members, no refresh)."""
    values = {
        "name": segment.name,
        "description": segment.description,
        "type": segment.type.value,
        "definition": Jsonb(_definition(segment)),
        "currency": segment.currency,
        "refresh_frequency": segment.refresh_frequency,
    }
    if existing is None:
        statement = (
            "INSERT INTO {} (name, description, type, definition, currency, refresh_frequency) "
            "VALUES (%(name)s, %(description)s, %(type)s, %(definition)s, %(currency)s, %(refresh_frequency)s)"
        )
    elif existing.deleted_at is not None:
        statement = (
            "UPDATE {} SET description = %(description)s, type = %(type)s, definition = %(definition)s, "
            "currency = %(currency)s, refresh_frequency = %(refresh_frequency)s, size = NULL, "
            "last_refreshed = NULL, last_refresh_id = NULL, created_at = now(), updated_at = now(), "
            "deleted_at = NULL WHERE name = %(name)s"
        )
    else:
        statement = (
            "UPDATE {} SET description = %(description)s, type = %(type)s, definition = %(definition)s, "
            "currency = %(currency)s, refresh_frequency = %(refresh_frequency)s, updated_at = now() "
            "WHERE name = %(name)s"
        )
    conn.execute(sql.SQL(statement).format(_table(tenant, "segments")), values)  # type: ignore[arg-type]


def _unchanged(existing: StoredSegment, segment: Segment) -> bool:
    return dict(existing.definition) == _definition(segment)


def create(conn: Connection[Any], tenant: str, segment: Segment) -> StoredSegment:
    """Store a new segment after checking it against the tenant's fields (a deleted name may be used again)."""
    check(segment, field_catalog(conn, tenant))  # first: a tenant not loaded yet gets no segment tables either
    ensure_schema(conn, tenant)
    with conn.transaction():
        _lock(conn, _segment_lock_key(tenant, segment.name))
        existing = _find(conn, tenant, segment.name, for_update=True)
        if existing is not None and existing.deleted_at is None:
            raise SegmentExistsError(
                f"segment '{segment.name}' exists in tenant '{tenant}'; change its definition with cdp segment apply,"
                " or delete it first"
            )
        _write(conn, tenant, segment, existing)
    log_event(logger, "segment_created", tenant=tenant, segment=segment.name, type=segment.type.value)
    return get(conn, tenant, segment.name)


def apply(conn: Connection[Any], tenant: str, segments: Iterable[Segment]) -> ApplySummary:
    """Create or update each definition (all checked first, then written in one transaction).

    A stored segment that ``segments`` does not name is kept, not deleted (``not_in_files``): deleting is
    ``delete``'s job, never a side effect of a missing file.
    """
    wanted = list(segments)
    names = [segment.name for segment in wanted]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise SegmentDefinitionError(f"segment '{duplicate}' is defined twice; give each definition its own name")
    if wanted:  # checked first: a tenant not loaded yet gets no segment tables either
        catalog = field_catalog(conn, tenant)
        for segment in wanted:
            check(segment, catalog)
    ensure_schema(conn, tenant)
    summary = ApplySummary()
    with conn.transaction():
        for segment in sorted(wanted, key=lambda item: item.name):  # a fixed lock order: no deadlock between applies
            _lock(conn, _segment_lock_key(tenant, segment.name))
            existing = _find(conn, tenant, segment.name, for_update=True)
            if existing is None or existing.deleted_at is not None:
                summary.created.append(segment.name)
            elif _unchanged(existing, segment):
                summary.unchanged.append(segment.name)
                continue
            elif existing.frozen:
                raise StaticSegmentFrozenError(
                    f"segment '{segment.name}' is static and frozen since refresh {existing.last_refresh_id}; its "
                    "definition cannot change: define a new segment under another name"
                )
            else:
                summary.updated.append(segment.name)
            _write(conn, tenant, segment, existing)
        stored = {item.name for item in list_segments(conn, tenant)}
        summary.not_in_files.extend(sorted(stored - set(names)))
    log_event(logger, "segments_applied", tenant=tenant, names=summary.summary())
    return summary


def delete(conn: Connection[Any], tenant: str, name: str) -> None:
    """Soft-delete: ``deleted_at`` set and the members removed (the refresh history stays); the name is free again."""
    if not _has_tables(conn, tenant):  # nothing to delete or refresh; and reads and misses create nothing
        raise _not_found(tenant, name)
    with conn.transaction():
        _lock(conn, _segment_lock_key(tenant, name))
        existing = _find(conn, tenant, name, for_update=True)
        if existing is None or existing.deleted_at is not None:
            raise _not_found(tenant, name)
        conn.execute(
            sql.SQL("UPDATE {} SET deleted_at = now(), size = NULL WHERE name = %s").format(_table(tenant, "segments")),
            (name,),
        )
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE segment = %s").format(_table(tenant, "segment_members")),
            (name,),
        )
    log_event(logger, "segment_deleted", tenant=tenant, segment=name)


# -- refresh ---------------------------------------------------------------------------------------------------------


def _refreshable(conn: Connection[Any], tenant: str, name: str, *, for_update: bool = False) -> StoredSegment:
    found = _find(conn, tenant, name, for_update=for_update)
    if found is None or found.deleted_at is not None:
        raise _not_found(tenant, name)
    if found.frozen:
        raise StaticSegmentFrozenError(
            f"segment '{name}' is static: its members were frozen by refresh {found.last_refresh_id} and are not "
            "refreshed again"
        )
    return found


@contextmanager
def _members_table(conn: Connection[Any]) -> Iterator[sql.Identifier]:
    """The temporary table a refresh fills with member ids (inside the caller's transaction; dropped at commit)."""
    table = sql.Identifier(_REFRESH_MEMBERS)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} (customer_id text NOT NULL) ON COMMIT DROP").format(table))
    yield table


def _copy_ids(conn: Connection[Any], table: sql.Identifier, ids: pa.Table) -> int:
    """COPY the ``customer_id`` column of ``ids`` into ``table``; the number of rows."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    column = ids.select(["customer_id"]).cast(pa.schema([pa.field("customer_id", pa.string())]))
    statement = sql.SQL("COPY {} (customer_id) FROM STDIN (FORMAT csv)").format(table)
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for batch in column.to_batches(max_chunksize=100_000):
            sink = pa.BufferOutputStream()
            pa_csv.write_csv(batch, sink, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
            copy.write(sink.getvalue().to_pybytes())
    return int(column.num_rows)


def refresh(
    conn: Connection[Any],
    tenant: str,
    name: str,
    *,
    engine: Engine = "postgres",
    lake: LakeEngine | None = None,
) -> RefreshResult:
    """Recompute ``name``'s members and record who entered and who left, all in one transaction.

    ``engine="postgres"`` runs the compiled ``members_query`` in the database; ``engine="lake"`` computes the ids
    with Spark over the processed zone first (outside the transaction: it takes seconds) and COPYs them in. A static
    segment is frozen by its first refresh; a later one is refused (StaticSegmentFrozenError).
    """
    if engine not in ENGINES:
        raise SegmentStoreError(f"unknown engine '{engine}'; use postgres or lake")
    started = time.monotonic()
    if not _has_tables(conn, tenant):  # nothing to delete or refresh; and reads and misses create nothing
        raise _not_found(tenant, name)
    lake_ids: pa.Table | None = None
    lake_definition: Mapping[str, Any] | None = None
    if engine == "lake":
        if lake is None:
            raise SegmentStoreError("the lake engine needs the processed zone and a Spark session (LakeEngine)")
        before = _refreshable(conn, tenant, name)
        # lake_member_ids checks the definition against the Iceberg schemas before Spark reads anything.
        lake_ids, lake_definition = lake.member_ids(before.segment, tenant), before.definition
    with conn.transaction():
        _lock(conn, _segment_lock_key(tenant, name))
        stored = _refreshable(conn, tenant, name, for_update=True)
        with _members_table(conn) as members:
            if lake_ids is None:
                from activators.segments.compile_sql import members_query

                segment = stored.segment
                catalog = field_catalog(conn, tenant)  # checked again: the tables may have changed since apply
                check(segment, catalog)
                compiled = members_query(segment, tenant, catalog)
                size = conn.execute(
                    sql.SQL("INSERT INTO {} (customer_id) {}").format(members, compiled.query), compiled.params
                ).rowcount
            else:
                if stored.definition != lake_definition:
                    raise SegmentStoreError(
                        f"segment '{name}' was redefined while the lake computed its members; refresh it again"
                    )
                size = _copy_ids(conn, members, lake_ids)
            refresh_id, entered, left = _record(conn, tenant, name, members, engine, size)
    seconds = time.monotonic() - started
    log_event(
        logger,
        "segment_refreshed",
        tenant=tenant,
        segment=name,
        engine=engine,
        refresh_id=refresh_id,
        size=size,
        entered=entered,
        left=left,
        seconds=round(seconds, 3),
    )
    return RefreshResult(refresh_id, name, size, entered, left, seconds, engine)


def _record(
    conn: Connection[Any], tenant: str, name: str, members: sql.Identifier, engine: Engine, size: int
) -> tuple[int, int, int]:
    """In the refresh's transaction: the refresh row, the changes against the previous members, the members, the
    segment's size; ``(refresh_id, entered, left)``."""
    # Temporary tables are never analysed automatically; without statistics the anti-joins below plan as if the
    # table were tiny (nested loops over a million ids).
    conn.execute(sql.SQL("ANALYZE {}").format(members))
    row = conn.execute(
        sql.SQL("INSERT INTO {} (segment, engine, started_at) VALUES (%s, %s, now()) RETURNING refresh_id").format(
            _table(tenant, "segment_refreshes")
        ),
        (name, engine),
    ).fetchone()
    assert row is not None
    refresh_id = int(row[0])
    names = {
        "members": members,
        "current": _table(tenant, "segment_members"),
        "changes": _table(tenant, "segment_member_changes"),
    }
    params = {"refresh_id": refresh_id, "segment": name}
    entered = conn.execute(
        sql.SQL(
            "INSERT INTO {changes} (refresh_id, segment, customer_id, change) "
            "SELECT %(refresh_id)s, %(segment)s, t.customer_id, 'entered' FROM {members} t WHERE NOT EXISTS "
            "(SELECT 1 FROM {current} m WHERE m.segment = %(segment)s AND m.customer_id = t.customer_id)"
        ).format(**names),
        params,
    ).rowcount
    left = conn.execute(
        sql.SQL(
            "INSERT INTO {changes} (refresh_id, segment, customer_id, change) "
            "SELECT %(refresh_id)s, %(segment)s, m.customer_id, 'left' FROM {current} m "
            "WHERE m.segment = %(segment)s "
            "AND NOT EXISTS (SELECT 1 FROM {members} t WHERE t.customer_id = m.customer_id)"
        ).format(**names),
        params,
    ).rowcount
    conn.execute(
        sql.SQL(
            "DELETE FROM {current} m USING {changes} c WHERE c.refresh_id = %(refresh_id)s AND c.change = 'left' "
            "AND m.segment = %(segment)s AND m.customer_id = c.customer_id"
        ).format(**names),
        params,
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {current} (segment, customer_id, refresh_id) SELECT %(segment)s, c.customer_id, "
            "%(refresh_id)s FROM {changes} c WHERE c.refresh_id = %(refresh_id)s AND c.change = 'entered'"
        ).format(**names),
        params,
    )
    counts = {**params, "size": size, "entered": entered, "left": left}
    conn.execute(
        sql.SQL(
            "UPDATE {} SET finished_at = clock_timestamp(), size = %(size)s, entered_count = %(entered)s, "
            "left_count = %(left)s WHERE refresh_id = %(refresh_id)s"
        ).format(_table(tenant, "segment_refreshes")),
        counts,
    )
    conn.execute(
        sql.SQL(
            "UPDATE {} SET size = %(size)s, last_refreshed = now(), last_refresh_id = %(refresh_id)s "
            "WHERE name = %(segment)s"
        ).format(_table(tenant, "segments")),
        counts,
    )
    return refresh_id, entered, left


# -- scheduling, overlap, preview ------------------------------------------------------------------------------------


def due(conn: Connection[Any], tenant: str, now: datetime) -> list[str]:
    """The segments to refresh at ``now`` (aware), by name: every one never refreshed, and each dynamic one whose
    cron (``refresh_frequency``, UTC) has fired since its last refresh. Deleted and frozen static ones never are."""
    from croniter import croniter

    if now.tzinfo is None:
        raise ValueError("due() needs an aware datetime (UTC)")
    names: list[str] = []
    for stored in list_segments(conn, tenant):
        if stored.last_refreshed is None:
            names.append(stored.name)
        elif stored.type is SegmentType.DYNAMIC and stored.refresh_frequency:
            fires = croniter(stored.refresh_frequency, stored.last_refreshed.astimezone(UTC)).get_next(datetime)
            if fires <= now:
                names.append(stored.name)
    return names


def overlap(conn: Connection[Any], tenant: str, names: Sequence[str]) -> dict[tuple[str, ...], int]:
    """The size of every non-empty intersection of ``names``' current members, keyed by the combination (in the
    order given), smallest combinations first; from one query over ``segment_members``."""
    unique = list(dict.fromkeys(names))
    if not unique:
        raise SegmentStoreError("overlap needs at least one segment name")
    if len(unique) > MAX_OVERLAP_SEGMENTS:
        raise SegmentStoreError(f"overlap compares at most {MAX_OVERLAP_SEGMENTS} segments at once")
    if not _has_tables(conn, tenant):
        raise _not_found(tenant, unique[0])
    with conn.transaction():
        for name in unique:
            stored = _find(conn, tenant, name)
            if stored is None or stored.deleted_at is not None:
                raise _not_found(tenant, name)
            if stored.last_refresh_id is None:
                raise SegmentStoreError(f"segment '{name}' was never refreshed; run cdp segment refresh {name}")
        # Per customer, the set of the asked segments holding them as a bit mask; then how many customers share each
        # mask. An intersection's size is the sum over the masks that contain it.
        rows = conn.execute(
            sql.SQL(
                "SELECT mask, count(*) FROM (SELECT m.customer_id, bit_or(1 << (a.position::int - 1)) AS mask "
                "FROM {} m JOIN unnest(%s::text[]) WITH ORDINALITY AS a(segment, position) ON m.segment = a.segment "
                "GROUP BY m.customer_id) per_customer GROUP BY mask"
            ).format(_table(tenant, "segment_members")),
            (unique,),
        ).fetchall()
    by_mask = {int(mask): int(count) for mask, count in rows}
    sizes: dict[tuple[str, ...], int] = {}
    for width in range(1, len(unique) + 1):
        for combination in combinations(range(len(unique)), width):
            wanted = sum(1 << index for index in combination)
            sizes[tuple(unique[index] for index in combination)] = sum(
                count for mask, count in by_mask.items() if mask & wanted == wanted
            )
    return sizes


def preview(conn: Connection[Any], tenant: str, segment: Segment, *, sample: int = 10) -> Preview:
    """The members ``segment`` would have now: how many, and ``sample`` of them (customer_id, email masked);
    nothing is stored (a read-only transaction)."""
    from activators.segments.compile_sql import members_query
    from plugins.core.redaction import RecordMasker

    catalog = field_catalog(conn, tenant)
    check(segment, catalog)
    compiled = members_query(segment, tenant, catalog)
    masker = RecordMasker.configured()
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM ({}) members").format(compiled.query), compiled.params
        ).fetchone()
        rows = conn.execute(
            sql.SQL(
                "SELECT c.customer_id, c.email FROM ({}) members JOIN {} c USING (customer_id) "
                "ORDER BY c.customer_id LIMIT %(cdp_sample)s"
            ).format(compiled.query, _table(tenant, "customers")),
            {**compiled.params, "cdp_sample": sample},
        ).fetchall()
    return Preview(
        size=0 if row is None else int(row[0]),
        sample=[masker.mask({"customer_id": customer_id, "email": email}) for customer_id, email in rows],
    )
