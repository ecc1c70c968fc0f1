"""Audience exports: a segment's refresh as Parquet files for the activators (docs/segments.md, "Audience exports").

One export is one refresh for one channel, at ``{exports}/{tenant}/{segment}/{refresh_id}/``:

- ``members/part-NNNNN.parquet``: every member with the personalisation columns (contact, names, address, the
  channel's consent, the metrics a template uses in the segment's currency, and any ``columns`` asked for);
- ``entered/part-NNNNN.parquet``: the members who entered in this refresh, with the same columns;
- ``left/part-NNNNN.parquet``: who left in this refresh, with the contact columns a destination removes them by;
- ``_manifest.json``, written LAST: what was exported, a checksum per part, the counts and the schema. A reader
  trusts an export only when its manifest exists and every part matches its checksum (:func:`read_export`).

The rows come from ONE query per part kind over a repeatable-read snapshot of PostgreSQL (members joined to
``customers`` and a per-customer aggregate of ``customer_metrics``), streamed through ``COPY ... TO STDOUT`` into
Arrow and written as zstd Parquet parts of at most ``part_rows`` rows through the project's ObjectStore (atomic
writes: a part is whole or absent). Members who refused the channel (``consent_<channel>``; see
:data:`CONSENT_MODES`) or who match an erasure tombstone of the processed zone (PostgreSQL may lag the lake) are left
out of ``members/`` and ``entered/`` and counted; erased people who left keep only their ``customer_id`` in ``left/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from psycopg import sql

from activators.segments import store as segments
from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event
from plugins.core.layout import validate_name
from plugins.core.storage import ObjectStore
from plugins.transforms.consent import CHANNELS

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import Connection

    from plugins.transforms.catalog import ProcessedZone

logger = logging.getLogger(__name__)

EXPORTS_ENV_VAR = "CDP_EXPORTS_URL"
DEFAULT_EXPORTS_URL = "data/exports"
CONSENT_MODE_ENV_VAR = "CDP_CONSENT_MODE"
ConsentMode = Literal["opt-out", "opt-in"]
#: ``opt-out`` (default): a member is exported unless their consent for the channel is ``denied``. ``opt-in``: only
#: members whose consent is ``granted`` (``unknown`` and missing are left out too).
CONSENT_MODES: tuple[ConsentMode, ...] = ("opt-out", "opt-in")
DEFAULT_PART_ROWS = 1_000_000
MANIFEST = "_manifest.json"
MANIFEST_VERSION = 1
Kind = Literal["members", "entered", "left"]
KINDS: tuple[Kind, ...] = ("members", "entered", "left")

#: The customers columns every member row carries (before the channel's consent column and the metrics).
CONTACT_COLUMNS = ("email", "phone", "first_name", "last_name", "full_name")
ADDRESS_COLUMNS = ("city", "region", "postal_code", "country")
#: What ``left/`` carries: enough for a destination to find and remove the person.
LEFT_COLUMNS = ("customer_id", *CONTACT_COLUMNS, "country")
#: The metrics a member row carries: the money ones in the segment's currency, the others combined across the
#: customer's currencies as the segment fields combine them (fields.METRIC_AGGREGATES).
MONEY_METRIC_COLUMNS = ("lifetime_value", "average_order_value")
COMBINED_METRIC_COLUMNS = ("order_count", "last_order_at", "days_since_last_order", "engagement_score")
#: Tombstone id types matched against the customer's own columns; any other type ``T`` (a provider id such as
#: ``stripe_customer``) is matched against the ``T_ids`` array column when ``customers`` has one.
TOMBSTONE_COLUMNS = {"email": ("email", "emails"), "phone": ("phone", "phones")}

_EXCLUDED = "cdp_export_excluded"
_TOMBSTONES = "cdp_export_tombstones"


class ExportError(CdpError):
    """An export that cannot be made as asked (the message says why and what to do)."""


class ExportRefusedError(ExportError):
    """An export of a refresh that is not the segment's latest, or that was exported for another channel."""


class UntrustedExportError(ExportError):
    """An export without a manifest (unfinished or crashed) or whose part does not match the manifest's checksum."""


@dataclass(frozen=True)
class ExportPart:
    """One Parquet file of an export: its path relative to the refresh's folder, rows, SHA-256 and size."""

    path: str
    rows: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ExportManifest:
    """What ``_manifest.json`` says. ``url`` (not stored in the file) is the refresh folder it was read from."""

    tenant: str
    segment: str
    refresh_id: int
    channel: str
    consent_mode: ConsentMode
    created_at: str
    parts: Mapping[str, Sequence[ExportPart]]
    counts: Mapping[str, int]
    schema: Mapping[str, Sequence[Mapping[str, Any]]]
    postgres_snapshot: str | None = None
    loaded_snapshots: Mapping[str, int] = field(default_factory=dict)
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "tenant": self.tenant,
            "segment": self.segment,
            "refresh_id": self.refresh_id,
            "channel": self.channel,
            "consent_mode": self.consent_mode,
            "created_at": self.created_at,
            "postgres_snapshot": self.postgres_snapshot,
            "loaded_snapshots": dict(self.loaded_snapshots),
            "counts": dict(self.counts),
            "parts": {kind: [vars(part) for part in parts] for kind, parts in self.parts.items()},
            "schema": {kind: [dict(column) for column in columns] for kind, columns in self.schema.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], url: str = "") -> ExportManifest:
        return cls(
            tenant=data["tenant"],
            segment=data["segment"],
            refresh_id=int(data["refresh_id"]),
            channel=data["channel"],
            consent_mode=data["consent_mode"],
            created_at=data["created_at"],
            postgres_snapshot=data.get("postgres_snapshot"),
            loaded_snapshots={str(k): int(v) for k, v in (data.get("loaded_snapshots") or {}).items()},
            counts={str(k): int(v) for k, v in data["counts"].items()},
            parts={kind: [ExportPart(**part) for part in parts] for kind, parts in data["parts"].items()},
            schema=data["schema"],
            url=url,
        )

    def summary(self) -> dict[str, Any]:
        """Stable keys for ``--json``: the manifest and where it is."""
        return {**self.to_json(), "url": self.url}


def resolve_exports_url(explicit: str | None = None) -> str:
    """``explicit``, else ``CDP_EXPORTS_URL``, else ``data/exports``."""
    return explicit or os.environ.get(EXPORTS_ENV_VAR) or DEFAULT_EXPORTS_URL


def resolve_consent_mode(explicit: str | None = None) -> ConsentMode:
    """``explicit``, else ``CDP_CONSENT_MODE``, else ``opt-out``; a ConfigError for anything else."""
    value = explicit or os.environ.get(CONSENT_MODE_ENV_VAR) or "opt-out"
    for mode in CONSENT_MODES:
        if value == mode:
            return mode
    raise ConfigError("consent_mode", f"'{value}' is not a consent mode; use opt-out or opt-in")


def refresh_prefix(tenant: str, segment: str, refresh_id: int) -> str:
    """The key of a refresh's export folder in the exports store."""
    return f"{tenant}/{segment}/{refresh_id}"


def _part_key(kind: str, index: int) -> str:
    return f"{kind}/part-{index:05d}.parquet"


# -- reading PostgreSQL into Arrow -----------------------------------------------------------------------------------


def _arrow_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type a column of a query result is read as (CSV COPY text parsed by pyarrow)."""
    import pyarrow as pa
    from psycopg.postgres import types

    info = types.get(type_code)
    name = info.name if info is not None else ""
    simple = {
        "text": pa.string(),
        "varchar": pa.string(),
        "bpchar": pa.string(),
        "int2": pa.int16(),
        "int4": pa.int32(),
        "int8": pa.int64(),
        "float4": pa.float32(),
        "float8": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamptz": pa.timestamp("us", tz="UTC"),
    }
    if name == "numeric":
        # numeric(p,s) is exact in decimal128 (p <= 38); an unconstrained numeric has no fixed scale: text keeps it.
        if precision is not None and scale is not None and precision <= 38:
            return pa.decimal128(precision, scale)
        return pa.string()
    return simple.get(name, pa.string())  # arrays and jsonb are selected as JSON text (see _select_expression)


class _CopyReader(io.RawIOBase):
    """The chunks of a ``COPY ... TO STDOUT`` as a readable stream (what pyarrow's CSV reader reads)."""

    def __init__(self, chunks: Iterator[Any], first: bytes) -> None:
        self._chunks = chunks
        self._pending = memoryview(first)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(bytes(next(self._chunks)))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def stream_query(
    conn: Connection[Any], query: sql.Composable, params: Mapping[str, Any], schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The rows of ``query`` as Arrow batches of ``schema``, streamed (never the whole result in memory).

    Measured at 1M rows of the export's 18 columns on the two-core dev machine (under load): a server-side cursor
    with ``fetchmany`` into ``pa.array`` took 25 s, binary ``COPY ... TO STDOUT`` through psycopg's ``rows()`` 30 s
    (both build a Python object per value), ``COPY ... TO STDOUT (FORMAT csv)`` parsed by pyarrow's multithreaded
    CSV reader 11 s, of which PostgreSQL's own COPY was 5 s. So: CSV COPY into pyarrow. CSV keeps NULL (an unquoted
    empty field) apart from an empty string (quoted ``""``), and the session's time zone is UTC (the caller sets it).
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    with conn.cursor() as cursor, cursor.copy(statement, params) as copy:
        chunks = iter(copy)
        first = b""
        for chunk in chunks:
            first = bytes(chunk)
            if first:
                break
        if not first:
            return  # pyarrow refuses an empty CSV; no rows is no batch
        reader = pa_csv.open_csv(
            io.BufferedReader(_CopyReader(chunks, first), 1 << 20),
            read_options=pa_csv.ReadOptions(column_names=schema.names, block_size=8 << 20),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={column.name: column.type for column in schema},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
                true_values=["t"],
                false_values=["f"],
                timestamp_parsers=[pa_csv.ISO8601],
            ),
        )
        for batch in reader:
            yield batch if batch.schema.equals(schema) else pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def query_schema(conn: Connection[Any], query: sql.Composable, params: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema :func:`stream_query` reads ``query`` as (from the result's description; no row read)."""
    import pyarrow as pa

    with conn.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(query), params)
        description = cursor.description or []
    return pa.schema(
        [pa.field(column.name, _arrow_type(column.type_code, column.precision, column.scale)) for column in description]
    )


# -- writing parts ---------------------------------------------------------------------------------------------------


class _PartWriter:
    """Parquet (zstd) parts of at most ``part_rows`` rows, each written whole through the store."""

    def __init__(self, store: ObjectStore, prefix: str, kind: str, schema: pa.Schema, part_rows: int) -> None:
        self.store, self.prefix, self.kind, self.schema, self.part_rows = store, prefix, kind, schema, part_rows
        self.parts: list[ExportPart] = []
        self._sink: Any = None
        self._writer: Any = None
        self._rows = 0

    def _open(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._sink = pa.BufferOutputStream()
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._rows = 0

    def _close(self) -> None:
        self._writer.close()
        data = self._sink.getvalue().to_pybytes()
        path = _part_key(self.kind, len(self.parts))
        self.store.write_bytes(f"{self.prefix}/{path}", data)
        self.parts.append(ExportPart(path, self._rows, hashlib.sha256(data).hexdigest(), len(data)))
        self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                self._open()
            take = min(self.part_rows - self._rows, batch.num_rows - offset)
            self._writer.write_batch(batch.slice(offset, take))
            self._rows += take
            offset += take
            if self._rows == self.part_rows:
                self._close()

    def finish(self) -> list[ExportPart]:
        """Close the last part; a kind without rows gets one empty part, so every kind carries its schema."""
        if self._writer is None and not self.parts:
            self._open()
        if self._writer is not None:
            self._close()
        return self.parts


# -- the export --------------------------------------------------------------------------------------------------------


def _table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def _columns(conn: Connection[Any], tenant: str, table: str) -> dict[str, str]:
    """``{column: type}`` of a tenant's table, types as ``format_type`` spells them (empty when no such table)."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        (tenant, table),
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _select_expression(column: str, data_type: str) -> sql.Composable:
    """``c.column`` as exported: arrays and JSON as JSON text (Parquet gets a string column)."""
    ref = sql.SQL("c.{}").format(sql.Identifier(column))
    if data_type.endswith("[]") or data_type in ("json", "jsonb"):
        return sql.SQL("to_jsonb({})::text AS {}").format(ref, sql.Identifier(column))
    return sql.SQL("{} AS {}").format(ref, sql.Identifier(column))


def check_extra_columns(conn: Connection[Any], tenant: str, wanted: Sequence[str], channel: str) -> list[str]:
    """The extra ``customers`` columns asked for, checked against the tenant's field catalogue: each must be a
    customers field (not a metric or a custom key); those exported anyway are dropped."""
    from activators.segments.fields import FieldCatalog, FieldSource
    from activators.segments.model import SegmentDefinitionError

    if not wanted:
        return []
    catalog = FieldCatalog.from_postgres(conn, tenant)
    base = {"customer_id", *CONTACT_COLUMNS, *ADDRESS_COLUMNS, f"consent_{channel}"}
    extra: list[str] = []
    for name in wanted:
        try:
            found = catalog.resolve(name)
        except SegmentDefinitionError as exc:
            raise ExportError(f"--columns: {exc}") from None
        if found.source is not FieldSource.CUSTOMERS:
            raise ExportError(f"--columns: '{name}' is not a column of customers; only customers columns are added")
        if name not in base and name not in extra:
            extra.append(name)
    return extra


@dataclass(frozen=True)
class _Plan:
    """What one export reads: the segment, its currency, the columns of customers and metrics that exist."""

    tenant: str
    segment: str
    refresh_id: int
    channel: str
    consent_mode: ConsentMode
    currency: str | None
    customers: Mapping[str, str]
    metrics_columns: Mapping[str, str]
    extra: Sequence[str]

    @property
    def params(self) -> dict[str, Any]:
        return {"segment": self.segment, "refresh_id": self.refresh_id, "currency": self.currency}

    def ids(self, kind: Kind) -> sql.Composable:
        """The customer ids of one part kind, for this refresh (copied by :func:`_copy_ids`)."""
        return sql.SQL("SELECT customer_id FROM {}").format(_ids_table(kind))

    def source_ids(self, kind: Kind) -> sql.Composable:
        """The customer ids of one part kind in the segment tables."""
        if kind == "members":
            return sql.SQL("SELECT customer_id FROM {} WHERE segment = %(segment)s").format(
                _table(self.tenant, "segment_members")
            )
        return sql.SQL(
            "SELECT customer_id FROM {} WHERE refresh_id = %(refresh_id)s AND segment = %(segment)s AND change = {}"
        ).format(_table(self.tenant, "segment_member_changes"), sql.Literal(kind))

    def metrics(self, kind: Kind) -> sql.Composable:
        """One row per customer of ``kind``: the money metrics in the segment's currency, the others combined."""
        from activators.segments.fields import METRIC_AGGREGATES

        if not self.metrics_columns:
            columns = [
                sql.SQL("NULL::{} AS {}").format(sql.SQL(kind), sql.Identifier(name))
                for name, kind in zip(
                    (*MONEY_METRIC_COLUMNS, *COMBINED_METRIC_COLUMNS),
                    ("numeric", "numeric", "bigint", "timestamptz", "integer", "double precision"),
                    strict=True,
                )
            ]
            return sql.SQL("SELECT NULL::text AS customer_id, {} WHERE false").format(sql.SQL(", ").join(columns))
        money = [
            # An aggregate forgets numeric's precision and scale: cast back, so Arrow gets the exact decimal type.
            sql.SQL("(max(x.{0}) FILTER (WHERE x.currency = %(currency)s))::{1} AS {0}").format(
                sql.Identifier(name), sql.SQL(self.metrics_columns[name])
            )
            for name in MONEY_METRIC_COLUMNS
        ]
        combined: list[sql.Composable] = []
        for name in COMBINED_METRIC_COLUMNS:
            value = sql.SQL("{}(x.{})").format(sql.SQL(METRIC_AGGREGATES[name]), sql.Identifier(name))
            if METRIC_AGGREGATES[name] == "sum":
                value = sql.SQL("{}::bigint").format(value)  # sum() of a bigint is a numeric
            combined.append(sql.SQL("{} AS {}").format(value, sql.Identifier(name)))
        return sql.SQL("SELECT x.customer_id, {} FROM {} x WHERE x.customer_id IN ({}) GROUP BY x.customer_id").format(
            sql.SQL(", ").join([*money, *combined]), _table(self.tenant, "customer_metrics"), self.ids(kind)
        )

    def rows(self, kind: Kind) -> sql.Composable:
        """The one batch query of a part kind, ordered by customer_id (a re-export writes the same bytes)."""
        if kind == "left":
            # Erased people who left keep only their customer_id: the export must not bring their contacts back.
            columns = [
                sql.SQL("CASE WHEN e.customer_id IS NULL THEN c.{0} END AS {0}").format(sql.Identifier(name))
                for name in LEFT_COLUMNS[1:]
            ]
            return sql.SQL(
                "SELECT k.customer_id, {} FROM ({}) k LEFT JOIN {} c ON c.customer_id = k.customer_id "
                "LEFT JOIN {} e ON e.customer_id = k.customer_id AND e.reason = 'erased' ORDER BY k.customer_id"
            ).format(sql.SQL(", ").join(columns), self.ids(kind), _table(self.tenant, "customers"), _excluded_table())
        person = [
            _select_expression(name, self.customers[name])
            for name in ("customer_id", *CONTACT_COLUMNS, *ADDRESS_COLUMNS, f"consent_{self.channel}")
        ]
        metrics = [
            sql.SQL("%(currency)s::text AS currency"),
            *(
                sql.SQL("mt.{0} AS {0}").format(sql.Identifier(name))
                for name in (*MONEY_METRIC_COLUMNS, *COMBINED_METRIC_COLUMNS)
            ),
        ]
        extra = [_select_expression(name, self.customers[name]) for name in self.extra]
        return sql.SQL(
            "SELECT {} FROM ({}) k JOIN {} c ON c.customer_id = k.customer_id LEFT JOIN ({}) mt "
            "ON mt.customer_id = k.customer_id "
            "WHERE NOT EXISTS (SELECT 1 FROM {} e WHERE e.customer_id = k.customer_id) "
            "ORDER BY k.customer_id"
        ).format(
            sql.SQL(", ").join([*person, *metrics, *extra]),
            self.ids(kind),
            _table(self.tenant, "customers"),
            self.metrics(kind),
            _excluded_table(),
        )


def _excluded_table() -> sql.Identifier:
    return sql.Identifier(_EXCLUDED)


def _ids_table(kind: Kind) -> sql.Identifier:
    return sql.Identifier(f"cdp_export_{kind}")


def _copy_ids(conn: Connection[Any], plan: _Plan) -> None:
    """Each kind's ids into a temporary table of its own, analysed. A refresh has just written them: autovacuum has
    not analysed the segment tables yet, and on their stale statistics (a handful of rows where a million are) the
    planner picks nested loops; these tables give it the real numbers."""
    for kind in KINDS:
        table = _ids_table(kind)
        conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS {}").format(table, plan.source_ids(kind)), plan.params
        )
        conn.execute(sql.SQL("ANALYZE {}").format(table))


def read_tombstones(processed: ProcessedZone | None, tenant: str) -> pa.Table:
    """The tenant's erasure tombstones (``id_type``, ``id_value``) from the processed zone; none when the tenant
    never erased anyone (no ``erasures`` table). Read with pyiceberg's Arrow reader: no Spark for an export."""
    import pyarrow as pa
    from pyiceberg.exceptions import NoSuchTableError

    from plugins.loaders.changes import read_batches
    from plugins.transforms.catalog import ProcessedZone, table_identifier
    from plugins.transforms.commit import live_data_files
    from plugins.transforms.erasure import ERASURES_TABLE

    empty = pa.table({"id_type": pa.array([], pa.string()), "id_value": pa.array([], pa.string())})
    zone = processed or ProcessedZone.resolve()
    catalog = zone.open()
    try:
        table = catalog.load_table(table_identifier(tenant, ERASURES_TABLE))
    except NoSuchTableError:
        return empty
    batches = [
        batch.select(["id_type", "id_value"]).cast(empty.schema)
        for batch in read_batches(table, live_data_files(table).values())
    ]
    return pa.Table.from_batches(batches, empty.schema) if batches else empty


def _exclude(conn: Connection[Any], plan: _Plan, tombstones: pa.Table) -> dict[str, int]:
    """Fill the excluded table (``erased`` among members and leavers; ``consent`` and ``no_profile`` among members)
    and count the members excluded for each reason."""
    excluded = _excluded_table()
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} (customer_id text PRIMARY KEY, reason text NOT NULL) ON COMMIT DROP").format(
            excluded
        )
    )
    customers = _table(plan.tenant, "customers")
    if tombstones.num_rows:
        _erased(conn, plan, tombstones)
    denied = sql.SQL("c.{} = 'denied'" if plan.consent_mode == "opt-out" else "c.{} IS DISTINCT FROM 'granted'")
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (customer_id, reason) SELECT k.customer_id, 'consent' FROM ({}) k JOIN {} c "
            "ON c.customer_id = k.customer_id WHERE {} ON CONFLICT (customer_id) DO NOTHING"
        ).format(excluded, plan.ids("members"), customers, denied.format(sql.Identifier(f"consent_{plan.channel}"))),
        plan.params,
    )
    # A member whose profile went (merged or deleted by a load after the refresh) has nothing to send.
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (customer_id, reason) SELECT k.customer_id, 'no_profile' FROM ({}) k "
            "WHERE NOT EXISTS (SELECT 1 FROM {} c WHERE c.customer_id = k.customer_id) ON CONFLICT DO NOTHING"
        ).format(excluded, plan.ids("members"), customers),
        plan.params,
    )
    conn.execute(sql.SQL("ANALYZE {}").format(excluded))
    rows = conn.execute(
        sql.SQL("SELECT e.reason, count(*) FROM {} e JOIN ({}) k USING (customer_id) GROUP BY e.reason").format(
            excluded, plan.ids("members")
        ),
        plan.params,
    ).fetchall()
    found = {str(reason): int(count) for reason, count in rows}
    return {
        "excluded_consent": found.get("consent", 0),
        "excluded_erased": found.get("erased", 0),
        "excluded_no_profile": found.get("no_profile", 0),
    }


def _erased(conn: Connection[Any], plan: _Plan, tombstones: pa.Table) -> None:
    """Members and leavers whose email, phone or provider id has a tombstone, into the excluded table."""
    table = sql.Identifier(_TOMBSTONES)
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} (id_type text, id_value text) ON COMMIT DROP").format(table))
    with conn.cursor() as cursor, cursor.copy(sql.SQL("COPY {} (id_type, id_value) FROM STDIN").format(table)) as copy:
        for row in tombstones.select(["id_type", "id_value"]).to_pylist():
            copy.write_row((row["id_type"], row["id_value"]))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    id_types = [str(row[0]) for row in conn.execute(sql.SQL("SELECT DISTINCT id_type FROM {}").format(table))]
    identifiers: list[sql.Composable] = []
    for id_type in id_types:
        scalar, array = TOMBSTONE_COLUMNS.get(id_type, (None, f"{id_type}_ids"))
        values: list[sql.Composable] = []
        if scalar is not None and scalar in plan.customers:
            values.append(sql.SQL("ARRAY[c.{}]").format(sql.Identifier(scalar)))
        if array in plan.customers and plan.customers[array].endswith("[]"):
            values.append(sql.SQL("c.{}").format(sql.Identifier(array)))
        if values:
            identifiers.append(
                sql.SQL("SELECT {}::text AS id_type, v FROM unnest({}) v").format(
                    sql.Literal(id_type), sql.SQL(" || ").join(values)
                )
            )
        else:
            log_event(logger, "export_tombstone_type_unmatched", logging.WARNING, tenant=plan.tenant, id_type=id_type)
    if not identifiers:
        return
    people = sql.SQL("{} UNION {}").format(plan.ids("members"), plan.ids("left"))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (customer_id, reason) SELECT DISTINCT k.customer_id, 'erased' FROM ({}) k "
            "JOIN {} c ON c.customer_id = k.customer_id CROSS JOIN LATERAL ({}) i "
            "JOIN {} t ON t.id_type = i.id_type AND t.id_value = i.v"
        ).format(
            _excluded_table(),
            people,
            _table(plan.tenant, "customers"),
            sql.SQL(" UNION ALL ").join(identifiers),
            table,
        ),
        plan.params,
    )


def _plan(
    conn: Connection[Any],
    tenant: str,
    segment: str,
    refresh_id: int | None,
    channel: str,
    consent_mode: ConsentMode,
    columns: Sequence[str],
) -> _Plan:
    """Checks, inside the export's transaction: the segment, that ``refresh_id`` is its latest, the columns."""
    row = conn.execute(
        sql.SQL("SELECT last_refresh_id, currency FROM {} WHERE name = %s AND deleted_at IS NULL").format(
            _table(tenant, "segments")
        ),
        (segment,),
    ).fetchone()
    if row is None:
        raise ExportError(f"no segment '{segment}' in tenant '{tenant}'; cdp segment list shows them")
    latest, currency = row
    if latest is None:
        raise ExportError(f"segment '{segment}' was never refreshed; run cdp segment refresh {segment}")
    if refresh_id is not None and refresh_id != latest:
        raise ExportRefusedError(
            f"refresh {refresh_id} is not the latest ({latest}); refresh again"
            if refresh_id < latest
            else f"segment '{segment}' has no refresh {refresh_id} (latest {latest})"
        )
    customers = _columns(conn, tenant, "customers")
    if not customers:
        raise ExportError(f"tenant '{tenant}' has no customers table in PostgreSQL yet; run cdp load run first")
    needed = ["customer_id", *CONTACT_COLUMNS, *ADDRESS_COLUMNS, f"consent_{channel}"]
    if missing := [name for name in needed if name not in customers]:
        raise ExportError(
            f"{tenant}.customers has no column {', '.join(missing)}; load the customers transform's table "
            "(cdp load run)"
        )
    return _Plan(
        tenant=tenant,
        segment=segment,
        refresh_id=int(latest),
        channel=channel,
        consent_mode=consent_mode,
        currency=currency,
        customers=customers,
        metrics_columns=_columns(conn, tenant, "customer_metrics"),
        extra=check_extra_columns(conn, tenant, columns, channel),
    )


def _snapshots(conn: Connection[Any], tenant: str) -> tuple[str | None, dict[str, int]]:
    """The PostgreSQL snapshot the export read (``xmin:xmax:xip``) and the processed-zone snapshots the loader had
    loaded into the tables it read (when the loader's state table is there)."""
    row = conn.execute("SELECT pg_current_snapshot()::text, to_regclass('cdp_loader.loaded_snapshots')").fetchone()
    assert row is not None
    loaded: dict[str, int] = {}
    if row[1] is not None:
        found = conn.execute(
            "SELECT table_name, snapshot_id FROM cdp_loader.loaded_snapshots WHERE tenant = %s "
            "AND table_name IN ('customers', 'customer_metrics', 'customer_events') ORDER BY table_name",
            (tenant,),
        ).fetchall()
        loaded = {str(name): int(snapshot) for name, snapshot in found}
    return (str(row[0]) if row[0] is not None else None), loaded


def _schema_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": column.name, "type": str(column.type), "nullable": column.nullable} for column in schema]


def _previous_channel(store: ObjectStore, key: str) -> str | None:
    """The channel of the manifest at ``key``, or None when there is none."""
    if not store.exists(key):
        return None
    try:
        return str(json.loads(store.read_bytes(key))["channel"])
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable manifest is no export to protect; it is replaced


def _write_export(
    conn: Connection[Any], store: ObjectStore, plan: _Plan, tombstones: pa.Table, part_rows: int
) -> ExportManifest:
    """Inside the export's transaction: the parts of each kind, stale parts removed, then the manifest."""
    prefix = refresh_prefix(plan.tenant, plan.segment, plan.refresh_id)
    manifest_key = f"{prefix}/{MANIFEST}"
    previous = _previous_channel(store, manifest_key)
    if previous is not None and previous != plan.channel:
        raise ExportRefusedError(f"refresh {plan.refresh_id} was exported for {previous}; refresh again")
    if store.exists(manifest_key):
        store.delete(manifest_key)  # untrusted from here until the new manifest is written
    stale = {info.key for info in store.list(prefix)}
    postgres_snapshot, loaded = _snapshots(conn, plan.tenant)
    _copy_ids(conn, plan)
    counts = _exclude(conn, plan, tombstones)
    parts: dict[str, list[ExportPart]] = {}
    schemas: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        query = plan.rows(kind)
        schema = query_schema(conn, query, plan.params)
        writer = _PartWriter(store, prefix, kind, schema, part_rows)
        for batch in stream_query(conn, query, plan.params, schema):
            writer.write(batch)
        parts[kind] = writer.finish()
        schemas[kind] = _schema_json(schema)
        counts[kind] = sum(part.rows for part in parts[kind])
    for key in sorted(stale - {f"{prefix}/{part.path}" for kind_parts in parts.values() for part in kind_parts}):
        store.delete(key)  # parts of an earlier export of this refresh that this one did not rewrite
    manifest = ExportManifest(
        tenant=plan.tenant,
        segment=plan.segment,
        refresh_id=plan.refresh_id,
        channel=plan.channel,
        consent_mode=plan.consent_mode,
        created_at=datetime.now(UTC).isoformat(),
        parts=parts,
        counts=counts,
        schema=schemas,
        postgres_snapshot=postgres_snapshot,
        loaded_snapshots=loaded,
        url=store.url_for(prefix),
    )
    store.write_bytes(manifest_key, json.dumps(manifest.to_json(), indent=2).encode())
    return manifest


def export_refresh(
    conn: Connection[Any],
    tenant: str,
    segment: str,
    refresh_id: int | None,
    exports_url: str,
    *,
    channel: str,
    part_rows: int = DEFAULT_PART_ROWS,
    processed: ProcessedZone | None = None,
    consent_mode: str | None = None,
    columns: Sequence[str] = (),
) -> ExportManifest:
    """Export ``segment``'s refresh ``refresh_id`` (None: the latest) for ``channel`` to ``exports_url``.

    Only the segment's latest refresh can be exported (members are kept for it alone). Exporting a refresh again for
    the same channel rewrites it (its old manifest goes first, so a crash midway leaves no trusted export); for
    another channel it is refused. Erasure tombstones come from ``processed`` (the default processed zone when None).
    ``conn`` is an autocommit connection (:func:`activators.segments.store.connect`); the reads run in one
    repeatable-read transaction of their own.
    """
    started = time.monotonic()
    validate_name("tenant", tenant)
    if channel not in CHANNELS:
        raise ConfigError("channel", f"'{channel}' is not a channel; use {', '.join(CHANNELS)}")
    if part_rows < 1:
        raise ConfigError("part_rows", f"{part_rows} must be a positive number of rows")
    mode = resolve_consent_mode(consent_mode)
    tombstones = read_tombstones(processed, tenant)
    segments.get(conn, tenant, segment)  # a missing segment (or segment tables) is one line, before anything else
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # COPY's text output: timestamps in UTC and ISO, as the Arrow parser reads them.
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        # The joins and the metrics aggregate of a million members hash in memory instead of sorting on disk.
        conn.execute("SET LOCAL work_mem = '64MB'")
        # Two exports of one segment at once would interleave their parts: the second waits for the first.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdp_segments.export:{tenant}:{segment}",)
        )
        plan = _plan(conn, tenant, segment, refresh_id, channel, mode, columns)
        manifest = _write_export(conn, ObjectStore(exports_url, setting="exports_url"), plan, tombstones, part_rows)
    log_event(
        logger,
        "segment_exported",
        tenant=tenant,
        segment=segment,
        refresh_id=plan.refresh_id,
        channel=channel,
        consent_mode=mode,
        counts=manifest.counts,
        parts={kind: len(kind_parts) for kind, kind_parts in manifest.parts.items()},
        seconds=round(time.monotonic() - started, 3),
    )
    return manifest


# -- reading an export -------------------------------------------------------------------------------------------------


def read_export(exports_url: str, tenant: str, segment: str, refresh_id: int, *, verify: bool = True) -> ExportManifest:
    """The manifest of a finished export; UntrustedExportError when there is none (the export never finished) or,
    with ``verify``, when a part is missing or does not match its checksum."""
    store = ObjectStore(exports_url, setting="exports_url")
    prefix = refresh_prefix(validate_name("tenant", tenant), segment, refresh_id)
    key = f"{prefix}/{MANIFEST}"
    if not store.exists(key):
        raise UntrustedExportError(
            f"no export of refresh {refresh_id} of '{segment}' at {store.url_for(prefix)} (no {MANIFEST}: unfinished "
            f"or never made); run cdp segment export {segment} --channel CHANNEL"
        )
    manifest = ExportManifest.from_json(json.loads(store.read_bytes(key)), url=store.url_for(prefix))
    if verify:
        for kind in manifest.parts:
            for part in manifest.parts[kind]:
                _verified(store, prefix, part)
    return manifest


def _verified(store: ObjectStore, prefix: str, part: ExportPart) -> bytes:
    from plugins.core.errors import ObjectNotFoundError

    try:
        data = store.read_bytes(f"{prefix}/{part.path}")
    except ObjectNotFoundError:
        raise UntrustedExportError(
            f"{store.url_for(prefix)}: {part.path} is missing; export the refresh again"
        ) from None
    if len(data) != part.bytes or hashlib.sha256(data).hexdigest() != part.sha256:
        raise UntrustedExportError(
            f"{store.url_for(prefix)}: {part.path} does not match its checksum in {MANIFEST}; export the refresh again"
        )
    return data


def _part_bytes(manifest: ExportManifest, kind: Kind, exports_url: str) -> Iterator[bytes]:
    """The bytes of each part of one kind, in order, each checked against its checksum."""
    if kind not in manifest.parts:
        raise ExportError(f"an export has members, entered and left parts, not '{kind}'")
    store = ObjectStore(exports_url, setting="exports_url")
    prefix = refresh_prefix(manifest.tenant, manifest.segment, manifest.refresh_id)
    for part in manifest.parts[kind]:
        yield _verified(store, prefix, part)


def export_batches(manifest: ExportManifest, kind: Kind, exports_url: str) -> Iterator[pa.RecordBatch]:
    """The rows of one part kind of an export, part after part, each part checked against its checksum first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for data in _part_bytes(manifest, kind, exports_url):
        yield from pq.ParquetFile(pa.BufferReader(data)).iter_batches()


def export_table(manifest: ExportManifest, kind: Kind, exports_url: str) -> pa.Table:
    """All the rows of one part kind as one Arrow table (with its schema even when empty), parts checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(pa.BufferReader(data)) for data in _part_bytes(manifest, kind, exports_url))
