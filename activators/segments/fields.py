"""The fields a tenant's segments may use, from the column types of its ``customers``, ``customer_metrics`` and
``customer_events`` tables: read from PostgreSQL or from the processed zone's Iceberg schemas, giving the same
catalogue (the loader maps Iceberg types to PostgreSQL ones one to one).

A field name resolves to a known column or is refused: no name from a definition ever reaches SQL as text.

- ``customers`` columns: source ``customers`` (except ``custom_fields``, which holds the custom fields);
- ``customer_metrics`` columns except ``customer_id``, ``currency`` and ``computed_at``: source ``metrics``, combined
  per customer across currencies as :data:`METRIC_AGGREGATES` says; ``lifetime_value`` and ``average_order_value``
  are money, read in the segment's currency;
- ``custom.KEY``: source ``custom``, a top-level key of ``customers.custom_fields`` (a JSON object as text); KEY is
  letters, digits, ``_``, ``-`` and ``.`` (a dot is part of the key: ``custom.a.b`` is the key ``a.b``).

Columns of a type no operator takes (structs and maps as ``jsonb``, binary) are not fields.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from activators.segments.model import FieldType, SegmentDefinitionError
from plugins.core.errors import CdpError

if TYPE_CHECKING:
    import psycopg
    from pyiceberg.catalog import Catalog
    from pyiceberg.types import IcebergType

    from plugins.transforms.catalog import ProcessedZone

CUSTOMERS_TABLE = "customers"
METRICS_TABLE = "customer_metrics"
EVENTS_TABLE = "customer_events"
CUSTOM_FIELDS_COLUMN = "custom_fields"
CUSTOM_PREFIX = "custom."
#: customer_metrics' key and bookkeeping columns: not fields.
METRICS_NOT_FIELDS = frozenset({"customer_id", "currency", "computed_at"})
#: Metrics kept per currency: a segment reads them in its own currency (the row of that currency, else null).
MONEY_METRICS = frozenset({"lifetime_value", "average_order_value"})
#: How the other metrics combine a customer's rows across currencies (``max`` for any metric not named here).
METRIC_AGGREGATES: Mapping[str, str] = {
    "order_count": "sum",
    "first_order_at": "min",
    "last_order_at": "max",
    "days_since_last_order": "min",
    "events_90d": "max",
    "engagement_score": "max",
}
DEFAULT_METRIC_AGGREGATE = "max"
#: The columns a behavioural criterion reads from customer_events.
EVENT_COLUMNS = frozenset({"customer_id", "type", "occurred_at", "properties"})
_CUSTOM_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

#: PostgreSQL column types (``format_type`` spellings, as the loader creates them) -> field types.
_POSTGRES_TYPES: Mapping[str, FieldType] = {
    "text": FieldType.TEXT,
    "smallint": FieldType.NUMBER,
    "integer": FieldType.NUMBER,
    "bigint": FieldType.NUMBER,
    "real": FieldType.NUMBER,
    "double precision": FieldType.NUMBER,
    "numeric": FieldType.NUMBER,
    "boolean": FieldType.BOOLEAN,
    "timestamp with time zone": FieldType.TIMESTAMP,
    "timestamp without time zone": FieldType.TIMESTAMP,
    "date": FieldType.TIMESTAMP,
    "text[]": FieldType.TEXT_LIST,
}


class UnknownFieldError(SegmentDefinitionError):
    """A field name that is no column of the tenant's tables (or a custom key with characters a key may not hold)."""


class MissingTableError(CdpError):
    """The tenant has no ``customers`` table where the catalogue was read: nothing to segment yet."""


class FieldSource(StrEnum):
    """Where a field's value comes from."""

    CUSTOMERS = "customers"
    METRICS = "metrics"
    CUSTOM = "custom"


@dataclass(frozen=True)
class SegmentField:
    """A resolved field: ``column`` of its source's table (for ``custom``: ``custom_fields``, and ``key`` the JSON
    key), its type, and whether it is money (read in the segment's currency)."""

    name: str
    source: FieldSource
    column: str
    type: FieldType
    money: bool = False
    key: str | None = None

    @property
    def aggregate(self) -> str:
        """How a metric combines a customer's rows across currencies: ``currency`` (money: the segment's currency's
        row), ``sum``, ``min`` or ``max``."""
        if self.money:
            return "currency"
        return METRIC_AGGREGATES.get(self.column, DEFAULT_METRIC_AGGREGATE)


def postgres_field_type(type_name: str) -> FieldType | None:
    """The field type of a PostgreSQL column type (``numeric(38,9)`` is a number); None when no operator fits."""
    return _POSTGRES_TYPES.get(re.sub(r"\(.*\)", "", type_name).strip())


def iceberg_field_type(kind: IcebergType) -> FieldType | None:
    """The field type of an Iceberg type, as the loader's PostgreSQL column of it would give."""
    from pyiceberg import types as t

    if isinstance(kind, t.StringType):
        return FieldType.TEXT
    if isinstance(kind, t.IntegerType | t.LongType | t.FloatType | t.DoubleType | t.DecimalType):
        return FieldType.NUMBER
    if isinstance(kind, t.BooleanType):
        return FieldType.BOOLEAN
    if isinstance(kind, t.TimestampType | t.TimestamptzType | t.DateType):
        return FieldType.TIMESTAMP
    if isinstance(kind, t.ListType) and isinstance(kind.element_type, t.StringType):
        return FieldType.TEXT_LIST
    return None


@dataclass(frozen=True)
class FieldCatalog:
    """The fields of one tenant: built by :meth:`from_postgres` or :meth:`from_iceberg` (equal on the same data)."""

    fields: Mapping[str, SegmentField]
    custom_fields: bool = False  # customers has a custom_fields column (JSON text, or jsonb)
    events: bool = False  # the tenant has a customer_events table with the columns behaviour needs
    names: tuple[str, ...] = field(default=(), compare=False)
    customers: bool = True  # the tenant has a customers table
    #: Where the catalogue was read and what makes the tables (for the missing-table message).
    origin: str = field(default="", compare=False)

    @classmethod
    def from_columns(cls, tables: Mapping[str, Mapping[str, FieldType | None]], origin: str = "") -> FieldCatalog:
        """The catalogue from ``{table: {column: field type or None}}`` (a table left out does not exist)."""
        fields: dict[str, SegmentField] = {}
        for column, kind in tables.get(METRICS_TABLE, {}).items():
            if kind is not None and column not in METRICS_NOT_FIELDS:
                money = column in MONEY_METRICS
                fields[column] = SegmentField(column, FieldSource.METRICS, column, kind, money=money)
        customers = tables.get(CUSTOMERS_TABLE, {})
        for column, kind in customers.items():  # A customers column wins over a metric of the same name.
            if kind is not None and column != CUSTOM_FIELDS_COLUMN:
                fields[column] = SegmentField(column, FieldSource.CUSTOMERS, column, kind)
        events = EVENTS_TABLE in tables and set(tables[EVENTS_TABLE]) >= EVENT_COLUMNS
        return cls(
            fields=dict(sorted(fields.items())),
            custom_fields=CUSTOM_FIELDS_COLUMN in customers,
            events=events,
            names=tuple(sorted(fields)),
            customers=CUSTOMERS_TABLE in tables,
            origin=origin,
        )

    @classmethod
    def from_postgres(cls, conn: psycopg.Connection[Any], tenant: str) -> FieldCatalog:
        """The catalogue from the column types of the tenant's tables in PostgreSQL (the tenant's schema)."""
        rows = conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
            (tenant, [CUSTOMERS_TABLE, METRICS_TABLE, EVENTS_TABLE]),
        ).fetchall()
        tables: dict[str, dict[str, FieldType | None]] = {}
        for table, column, type_name in rows:
            tables.setdefault(table, {})[column] = postgres_field_type(type_name)
        return cls.from_columns(tables, f"PostgreSQL schema '{tenant}'; run 'cdp load run --tenant {tenant}'")

    @classmethod
    def from_iceberg(cls, zone: ProcessedZone | Catalog, tenant: str) -> FieldCatalog:
        """The catalogue from the Iceberg schemas of the tenant's processed tables (a zone, or its open catalog)."""
        from plugins.transforms.catalog import ProcessedZone

        catalog = zone.open() if isinstance(zone, ProcessedZone) else zone
        tables: dict[str, dict[str, FieldType | None]] = {}
        for table in (CUSTOMERS_TABLE, METRICS_TABLE, EVENTS_TABLE):
            if catalog.table_exists((tenant, table)):
                schema = catalog.load_table((tenant, table)).schema()
                tables[table] = {column.name: iceberg_field_type(column.field_type) for column in schema.fields}
        return cls.from_columns(tables, f"processed zone, tenant '{tenant}'; run 'cdp transform run --tenant {tenant}'")

    def require_customers(self) -> None:
        """A MissingTableError unless the tenant has a customers table."""
        if not self.customers:
            where, _, action = self.origin.partition("; ")
            raise MissingTableError(
                f"no customers table ({where or 'this tenant'}); {action or 'load the tenant first'}"
            )

    def resolve(self, name: str) -> SegmentField:
        """The field called ``name``; an UnknownFieldError (one line, with close names) when there is none."""
        if name.startswith(CUSTOM_PREFIX):
            key = name.removeprefix(CUSTOM_PREFIX)
            if not _CUSTOM_KEY_RE.fullmatch(key):
                raise UnknownFieldError(
                    f"custom field key {key[:60]!r} may hold only letters, digits, '_', '-' and '.' (1-128 of them)"
                )
            if not self.custom_fields:
                raise UnknownFieldError(f"field {name!r}: the customers table has no custom_fields column")
            return SegmentField(name, FieldSource.CUSTOM, CUSTOM_FIELDS_COLUMN, FieldType.CUSTOM, key=key)
        found = self.fields.get(name)
        if found is None:
            close = difflib.get_close_matches(name, self.names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; see 'Fields' in docs/segments.md"
            raise UnknownFieldError(f"unknown field {name[:60]!r}{hint}")
        return found
