"""The PostgreSQL loader: processed tables as typed tables, one PostgreSQL schema per tenant (``"acme"."customers"``).

Incremental (the default): the rows of the files added since the loaded snapshot go by binary COPY into a temporary
staging table, then ONE ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE`` the row's content differs (an unchanged
row is neither written nor re-indexed), the deleted keys are deleted, and the loaded snapshot is recorded in
``cdp_loader.loaded_snapshots``: all in one transaction, so a crash leaves the table and its state as they were.

Full refresh (historic): binary COPY into ``<table>__new``, the primary key and the workload's indexes built after the
load, integrity checks (row count equals the snapshot's, keys unique, a checksum over the keys), then one short
transaction with a ``lock_timeout`` renames ``<table>`` to ``<table>__previous`` and ``<table>__new`` to ``<table>``
and records the snapshot. Readers see the old table or the new one, never a partial one. ``rollback`` swaps back.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from loaders.postgres.embedded import resolve_url
from loaders.postgres.schema import Column, check_compatible, columns_for
from loaders.postgres.workloads import TableWorkload, workload
from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.descriptors import LoadMode, LoadRequest, LoadResult, TableChanges

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

#: Where each table's loaded snapshot is recorded, in the destination itself (the SQL below spells it out).
STATE = "cdp_loader.loaded_snapshots"
NEW_SUFFIX = "__new"
PREVIOUS_SUFFIX = "__previous"
SWAP_ATTEMPTS = 5


class PostgresLoadError(CdpError):
    """A PostgreSQL load failed: integrity checks, a concurrent load, or a swap that could not get its lock."""


@dataclass(frozen=True)
class _Target:
    schema: str
    table: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def new(self) -> str:
        return f"{self.table}{NEW_SUFFIX}"

    @property
    def previous(self) -> str:
        return f"{self.table}{PREVIOUS_SUFFIX}"


def _json_dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


class PostgresLoader:
    """Loads processed tables into PostgreSQL (see the module's docstring).

    ``postgres_url``: any PostgreSQL 14+ (libpq URL; TLS options such as ``sslmode`` and ``sslrootcert`` pass
    through), else ``CDP_POSTGRES_URL``, else the embedded server. Every statement runs under
    ``statement_timeout_ms``; the swap waits at most ``lock_timeout_ms`` for its lock, ``SWAP_ATTEMPTS`` times.
    """

    def __init__(
        self,
        postgres_url: str | None = None,
        *,
        statement_timeout_ms: int = 30 * 60 * 1000,
        lock_timeout_ms: int = 5000,
        pool_size: int = 4,
    ) -> None:
        from psycopg_pool import ConnectionPool

        self.url = resolve_url(postgres_url)
        self.lock_timeout_ms = lock_timeout_ms
        options = f"-c statement_timeout={int(statement_timeout_ms)} -c TimeZone=UTC"
        self.pool: ConnectionPool[Connection[Any]] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=pool_size,
            kwargs={"options": options},
            configure=self._configure,
            open=True,
            name="cdp-loader-postgres",
        )
        self._trigram: bool | None = None

    @staticmethod
    def _configure(connection: Connection[Any]) -> None:
        from psycopg.types.json import set_json_dumps

        set_json_dumps(_json_dumps, connection)
        connection.autocommit = True  # Transactions are explicit (connection.transaction()).

    def close(self) -> None:
        """Close the connection pool."""
        self.pool.close()

    def __enter__(self) -> PostgresLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------------------------------

    def loaded_snapshot(self, tenant: str, table: str) -> int | None:
        """The snapshot ``"tenant"."table"`` holds (None when never loaded, or its table was dropped since)."""
        with self.pool.connection() as connection:
            if not self._state_exists(connection):
                return None
            row = connection.execute(
                "SELECT s.snapshot_id FROM cdp_loader.loaded_snapshots s "
                "WHERE s.tenant = %s AND s.table_name = %s AND to_regclass(format('%%I.%%I', s.tenant, s.table_name))"
                " IS NOT NULL",
                (tenant, table),
            ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _state_exists(connection: Connection[Any]) -> bool:
        row = connection.execute("SELECT to_regclass(%s)", (STATE,)).fetchone()
        return row is not None and row[0] is not None

    def _ensure_state(self, connection: Connection[Any], tenant: str) -> None:
        from psycopg import sql

        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdp_loader.ddl', 0))")
            connection.execute("CREATE SCHEMA IF NOT EXISTS cdp_loader")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS cdp_loader.loaded_snapshots ("
                "tenant text NOT NULL, table_name text NOT NULL, snapshot_id bigint NOT NULL, "
                "previous_snapshot_id bigint, mode text NOT NULL, row_count bigint NOT NULL, "
                "loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, table_name))"
            )
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(tenant)))

    @staticmethod
    def _record_state(
        connection: Connection[Any], request: LoadRequest, row_count: int, *, previous: int | None, swapped: bool
    ) -> None:
        connection.execute(
            "INSERT INTO cdp_loader.loaded_snapshots AS s "
            "(tenant, table_name, snapshot_id, previous_snapshot_id, mode, row_count) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (tenant, table_name) DO UPDATE SET snapshot_id = EXCLUDED.snapshot_id, mode = EXCLUDED.mode, "
            "row_count = EXCLUDED.row_count, loaded_at = now(), "
            # Only a swap changes which snapshot the kept previous table holds.
            "previous_snapshot_id = CASE WHEN %s THEN EXCLUDED.previous_snapshot_id ELSE s.previous_snapshot_id END",
            (request.tenant, request.table, request.snapshot_id, previous, request.mode.value, row_count, swapped),
        )

    # -- loading ---------------------------------------------------------------------------------------------------

    def load(self, request: LoadRequest) -> LoadResult:
        """Bring ``"tenant"."table"`` to the request's snapshot, incrementally or by a full refresh and swap."""
        changes = request.changes
        if changes is None:
            raise PostgresLoadError(f"{request.table}: the PostgreSQL loader needs the framework's table changes")
        started = time.monotonic()
        target = _Target(request.tenant, request.table, tuple(changes.key), tuple(columns_for(changes.schema)))
        with self.pool.connection() as connection:
            self._ensure_state(connection, request.tenant)
            with self._table_lock(connection, target):
                exists = self._columns(connection, target.schema, target.table) is not None
                if request.mode is LoadMode.FULL_REFRESH or request.previous_snapshot_id is None or not exists:
                    result = self._load_full(connection, target, request, changes)
                else:
                    result = self._load_incremental(connection, target, request, changes)
        seconds = time.monotonic() - started
        log_event(logger, "postgres_loaded", tenant=request.tenant, table=request.table, mode=request.mode.value)
        return LoadResult(**{**result.__dict__, "seconds": seconds})

    @contextmanager
    def _table_lock(self, connection: Connection[Any], target: _Target) -> Iterator[None]:
        """One load of a table at a time, across processes (a session advisory lock, released on exit)."""
        name = f"cdp_loader:{target.schema}.{target.table}"
        connection.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))

    @staticmethod
    def _columns(connection: Connection[Any], schema: str, table: str) -> dict[str, str] | None:
        """The table's columns (name -> ``format_type``), or None when it does not exist."""
        rows = connection.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, table),
        ).fetchall()
        return {name: kind for name, kind in rows} or None

    def _check_state(
        self, connection: Connection[Any], request: LoadRequest, *, planned: bool = False
    ) -> tuple[int | None, int]:
        """The snapshot and row count the state records, locked; ``planned``: it must be the one planned from."""
        row = connection.execute(
            "SELECT snapshot_id, row_count FROM cdp_loader.loaded_snapshots WHERE tenant = %s AND table_name = %s "
            "FOR UPDATE",
            (request.tenant, request.table),
        ).fetchone()
        held = None if row is None else int(row[0])
        if planned and held != request.previous_snapshot_id:
            raise PostgresLoadError(
                f"{request.tenant}.{request.table} holds snapshot {held}, not {request.previous_snapshot_id} as "
                "planned: another load ran meanwhile; run the load again"
            )
        return held, 0 if row is None else int(row[1])

    def _load_incremental(
        self, connection: Connection[Any], target: _Target, request: LoadRequest, changes: TableChanges
    ) -> LoadResult:
        from psycopg import sql

        table = sql.Identifier(target.schema, target.table)
        names = [column.name for column in target.columns]
        stage, gone = sql.Identifier("_cdp_stage"), sql.Identifier("_cdp_deleted")
        with connection.transaction():
            _, held_rows = self._check_state(connection, request, planned=True)
            existing = self._columns(connection, target.schema, target.table) or {}
            for column in check_compatible(f"{target.schema}.{target.table}", existing, target.columns):
                # A new column: nullable, no default, so PostgreSQL adds it without rewriting the table.
                connection.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        table, sql.Identifier(column.name), sql.SQL(column.type)
                    )
                )
                log_event(logger, "postgres_column_added", table=f"{target.schema}.{target.table}", column=column.name)
            connection.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, table))
            staged = _copy(connection, stage, target.columns, changes.upserts())[0]
            connection.execute(sql.SQL("ANALYZE {}").format(stage))  # Temporary tables have no statistics otherwise.
            plan = workload(target.table, {c.name: c.type for c in target.columns}, target.key, trigram=False)
            if plan.partition_by_month and staged:
                self._ensure_partitions_from(connection, target, stage, plan.partition_by_month)
            conflict = [*target.key]
            if plan.partition_by_month and plan.partition_by_month not in conflict:
                conflict.append(plan.partition_by_month)
            all_columns = sql.SQL(", ").join(sql.Identifier(name) for name in names)
            changing = [sql.Identifier(name) for name in names if name not in conflict]
            updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(name) for name in changing)
            # The content check: PostgreSQL compares the stored row with the staged one column by column (in C), so
            # an unchanged row costs neither a new row version nor index entries, and COPY computes no hash.
            stored = sql.SQL(", ").join(sql.SQL("t.{}").format(name) for name in changing)
            staged_values = sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(name) for name in changing)
            # Staged keys the table has already: the rest are inserts (xmax = 0 would tell, but not on partitions).
            existing_keys = connection.execute(
                sql.SQL("SELECT count(*) FROM {} JOIN {} USING ({})").format(
                    stage, table, sql.SQL(", ").join(sql.Identifier(name) for name in conflict)
                )
            ).fetchone()
            inserted = staged - int(existing_keys[0] if existing_keys else 0)
            upsert = sql.SQL(
                "INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM {stage} "
                "ON CONFLICT ({conflict}) DO UPDATE SET {updates} WHERE ({stored}) IS DISTINCT FROM ({staged})"
            ).format(
                table=table,
                columns=all_columns,
                stage=stage,
                conflict=sql.SQL(", ").join(sql.Identifier(name) for name in conflict),
                updates=updates,
                stored=stored,
                staged=staged_values,
            )
            updated = connection.execute(upsert).rowcount - inserted
            key_columns = [column for column in target.columns if column.name in target.key]
            connection.execute(
                sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
                    gone, sql.SQL(", ").join(sql.Identifier(name) for name in target.key), table
                )
            )
            deleted_keys = _copy(connection, gone, key_columns, changes.deleted_keys())[0]
            deleted = 0
            if deleted_keys:
                matches = sql.SQL(" AND ").join(
                    sql.SQL("t.{0} = d.{0}").format(sql.Identifier(name)) for name in target.key
                )
                cursor = connection.execute(
                    sql.SQL("DELETE FROM {} AS t USING {} AS d WHERE {}").format(table, gone, matches)
                )
                deleted = cursor.rowcount
            connection.execute(sql.SQL("DROP TABLE {}").format(gone))
            row_count = held_rows + inserted - deleted
            self._record_state(connection, request, row_count, previous=None, swapped=False)
        return LoadResult(
            table=request.table,
            snapshot_id=request.snapshot_id,
            inserted=inserted,
            updated=updated,
            unchanged=staged - inserted - updated,
            deleted=deleted,
        )

    def _load_full(
        self, connection: Connection[Any], target: _Target, request: LoadRequest, changes: TableChanges
    ) -> LoadResult:
        from psycopg import sql

        generation = uuid.uuid4().hex[:8]
        new = sql.Identifier(target.schema, target.new)
        types = {column.name: column.type for column in target.columns}
        plan = workload(target.table, types, target.key, trigram=self._has_trigram(connection))
        definition = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in target.columns
        )
        partitioned = plan.partition_by_month
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(new))
        create = sql.SQL("CREATE TABLE {} ({})").format(new, definition)
        if partitioned:
            create = sql.SQL("{} PARTITION BY RANGE ({})").format(create, sql.Identifier(partitioned))
        connection.execute(create)
        if partitioned:
            self._ensure_partitions(connection, target.schema, target.new, generation, _months_of(changes, partitioned))
        with connection.transaction():
            copied, checksum = _copy(connection, new, target.columns, changes.all_rows(), checksum_of=_summable(target))
        primary = [*target.key, *([partitioned] if partitioned and partitioned not in target.key else [])]
        try:
            connection.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                    new,
                    sql.Identifier(_index_name(target.table, generation, "pkey")),
                    sql.SQL(", ").join(sql.Identifier(name) for name in primary),
                )
            )
        except Exception as exc:
            from psycopg import errors

            if isinstance(exc, errors.UniqueViolation | errors.NotNullViolation):
                raise PostgresLoadError(
                    f"{target.schema}.{target.table}: the snapshot's keys are not unique and non-null ({exc}); "
                    f"the live table is unchanged"
                ) from exc
            raise
        for index in plan.indexes:
            column_list = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(index.opclass or "")) for name in index.columns
            )
            connection.execute(
                sql.SQL("CREATE INDEX {} ON {} USING {} ({})").format(
                    sql.Identifier(_index_name(target.table, generation, index.purpose)),
                    new,
                    sql.SQL(index.method),
                    column_list,
                )
            )
        connection.execute(sql.SQL("ANALYZE {}").format(new))
        self._verify(connection, target, changes.row_count, copied, checksum)
        self._swap(connection, target, request, copied)
        return LoadResult(table=request.table, snapshot_id=request.snapshot_id, inserted=copied)

    def _verify(self, connection: Connection[Any], target: _Target, expected: int, copied: int, checksum: int) -> None:
        """The row count is the snapshot's, the keys unique (the primary key), the key checksum the rows sent's."""
        from psycopg import sql

        keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(name)) for name in target.key)
        row = connection.execute(
            sql.SQL(
                "SELECT count(*), "
                "coalesce(sum(('x' || left(md5(concat_ws(E'\\x1f', {keys})), 15))::bit(60)::bigint), 0) FROM {table}"
            ).format(keys=keys, table=sql.Identifier(target.schema, target.new))
        ).fetchone()
        assert row is not None
        count, stored = int(row[0]), int(row[1])
        name = f"{target.schema}.{target.table}"
        if count != expected or copied != expected:
            raise PostgresLoadError(
                f"{name}: {count} rows loaded but the snapshot has {expected}; the live table is unchanged"
            )
        if _summable(target) and stored != checksum:
            raise PostgresLoadError(f"{name}: the key checksum differs from the rows sent; the live table is unchanged")

    def _swap(self, connection: Connection[Any], target: _Target, request: LoadRequest, row_count: int) -> None:
        """``table`` -> ``table__previous``, ``table__new`` -> ``table``, and the state row: one short transaction."""
        from psycopg import errors, sql

        live = sql.Identifier(target.schema, target.table)
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                with connection.transaction():
                    connection.execute(
                        "SELECT set_config('lock_timeout', %s, true)", (f"{int(self.lock_timeout_ms)}ms",)
                    )
                    held, _ = self._check_state(connection, request)
                    exists = self._columns(connection, target.schema, target.table) is not None
                    connection.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(target.schema, target.previous))
                    )
                    if exists:
                        connection.execute(
                            sql.SQL("ALTER TABLE {} RENAME TO {}").format(live, sql.Identifier(target.previous))
                        )
                    connection.execute(
                        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            sql.Identifier(target.schema, target.new), sql.Identifier(target.table)
                        )
                    )
                    self._record_state(connection, request, row_count, previous=held if exists else None, swapped=True)
                return
            except errors.LockNotAvailable:
                log_event(logger, "postgres_swap_waiting", level=logging.WARNING, table=target.table, attempt=attempt)
                time.sleep(0.2 * attempt)  # Back off and retry: a long reader holds the table.
        raise PostgresLoadError(
            f"{target.schema}.{target.table}: readers held the table for {SWAP_ATTEMPTS} tries of "
            f"{self.lock_timeout_ms} ms; the new table is ready as {target.new}; run the load again"
        )

    def rollback(self, tenant: str, table: str) -> int | None:
        """Swap ``table__previous`` back in (the current table becomes the previous); the snapshot it holds."""
        from psycopg import sql

        target = _Target(tenant, table, (), ())
        swap = f"{table}__swap"
        with self.pool.connection() as connection, self._table_lock(connection, target):
            if self._columns(connection, tenant, target.previous) is None:
                raise PostgresLoadError(f"{tenant}.{table} has no previous table to roll back to")
            with connection.transaction():
                connection.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self.lock_timeout_ms)}ms",))
                for source, destination in ((table, swap), (target.previous, table), (swap, target.previous)):
                    connection.execute(
                        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                            sql.Identifier(tenant, source), sql.Identifier(destination)
                        )
                    )
                row = connection.execute(
                    "UPDATE cdp_loader.loaded_snapshots SET snapshot_id = previous_snapshot_id, "
                    "previous_snapshot_id = snapshot_id, mode = 'rollback', loaded_at = now() "
                    "WHERE tenant = %s AND table_name = %s RETURNING snapshot_id",
                    (tenant, table),
                ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _has_trigram(self, connection: Connection[Any]) -> bool:
        """Whether pg_trgm is installed or can be (the name indexes need it); asked once per loader."""
        if self._trigram is None:
            try:
                connection.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                self._trigram = True
            except Exception as exc:  # Not available, or no privilege: the name indexes are skipped.
                log_event(logger, "postgres_trigram_unavailable", level=logging.WARNING, error=str(exc))
                self._trigram = False
        return self._trigram

    def _ensure_partitions_from(self, connection: Connection[Any], target: _Target, stage: Any, column: str) -> None:
        from psycopg import sql

        rows = connection.execute(
            sql.SQL(
                "SELECT DISTINCT date_trunc('month', {} AT TIME ZONE 'UTC')::date FROM {} WHERE {} IS NOT NULL"
            ).format(sql.Identifier(column), stage, sql.Identifier(column))
        ).fetchall()
        self._ensure_partitions(connection, target.schema, target.table, uuid.uuid4().hex[:8], {r[0] for r in rows})

    @staticmethod
    def _ensure_partitions(connection: Connection[Any], schema: str, parent: str, generation: str, months: Any) -> None:
        """A partition for each month in ``months`` (first days) that the parent has none for."""
        from psycopg import sql

        existing = {
            row[0]
            for row in connection.execute(
                "SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''(\\d{4}-\\d{2})') "
                "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass(format('%%I.%%I', %s::text, %s::text))",
                (schema, parent),
            ).fetchall()
        }
        for month in sorted(months):
            label = f"{month.year:04d}-{month.month:02d}"
            if label in existing:
                continue
            following = (month.year + month.month // 12, month.month % 12 + 1)
            connection.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(schema, _index_name(parent.removesuffix(NEW_SUFFIX), generation, f"p{label}")),
                    sql.Identifier(schema, parent),
                    sql.Literal(f"{label}-01 00:00:00+00"),
                    sql.Literal(f"{following[0]:04d}-{following[1]:02d}-01 00:00:00+00"),
                )
            )


def _summable(target: _Target) -> tuple[str, ...]:
    """The key, when Python's ``str`` of its values is PostgreSQL's ``::text`` (text and integers): the checksum's
    columns. Other key types (timestamps print differently) are checked by count and uniqueness only."""
    types = {column.name: column.type for column in target.columns}
    exact = ("text", "smallint", "integer", "bigint")
    return target.key if all(types.get(name) in exact for name in target.key) else ()


def _index_name(table: str, generation: str, purpose: str) -> str:
    """Unique per build (the generation), so a new table's index never collides with the live table's."""
    name = f"{table}_{generation}_{purpose}"
    return name if len(name) <= 63 else f"{table[: 63 - len(generation) - len(purpose) - 2]}_{generation}_{purpose}"


def _months_of(changes: TableChanges, column: str) -> set[Any]:
    """The first day of every month ``column`` has a value in (reads only that column)."""
    import datetime as dt

    import pyarrow.compute as pc

    months: set[dt.date] = set()
    for batch in changes.all_rows():
        values = pc.drop_null(batch.column(column))
        if len(values):
            truncated = pc.floor_temporal(values, unit="month")
            months.update(value.date().replace(day=1) for value in pc.unique(truncated).to_pylist())
    return months


def _copy(
    connection: Connection[Any],
    table: Any,
    columns: Sequence[Column],
    batches: Iterable[pa.RecordBatch],
    *,
    checksum_of: Sequence[str] = (),
) -> tuple[int, int]:
    """Binary COPY of ``batches`` into ``table``; the rows copied and the checksum of ``checksum_of``'s values."""
    from psycopg import sql

    names = [column.name for column in columns]
    types = [column.copy_type for column in columns]
    positions = [i for i, column in enumerate(columns) if column.name in checksum_of]
    maps = [i for i, column in enumerate(columns) if column.copy_type == "jsonb"]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(sql.Identifier(name) for name in names)
    )
    copied = checksum = 0
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for batch in batches:
            values = [batch.column(column.name).to_pylist() for column in columns]
            for i in maps:
                values[i] = [_jsonable(value) for value in values[i]]
            write = copy.write_row
            for row in zip(*values, strict=True):
                write(row)
            if positions:
                for key in zip(*(values[i] for i in positions), strict=True):
                    text = "\x1f".join(map(str, key)).encode()
                    checksum += int(hashlib.md5(text, usedforsecurity=False).hexdigest()[:15], 16)
            copied += batch.num_rows
    return copied, checksum


def _jsonable(value: Any) -> Any:
    """Arrow's maps come as lists of (key, value) pairs: JSON objects instead."""
    if isinstance(value, list) and value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
        return {str(key): _jsonable(item) for key, item in value}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


__all__ = ["PostgresLoadError", "PostgresLoader", "TableWorkload"]
