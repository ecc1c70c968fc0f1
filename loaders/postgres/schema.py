"""PostgreSQL tables from a processed table's Arrow schema, and what may change in them without a full refresh.

Typed columns for scalars, ``jsonb`` for structs, maps and lists of them (nested and custom fields), arrays for lists
of scalars (tags). The type names are PostgreSQL's own ``format_type`` spellings, so an existing table's columns
compare with the wanted ones as strings. Every type used has an equality operator, which the upsert's content check
needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    import pyarrow as pa

JSONB = "jsonb"


class SchemaChangeError(CdpError):
    """A table's schema changed in a way an incremental load cannot apply (a column removed or retyped)."""


@dataclass(frozen=True)
class Column:
    """One PostgreSQL column: its name, type (``format_type`` spelling) and the type binary COPY sends it as."""

    name: str
    type: str
    copy_type: str


def postgres_type(arrow_type: pa.DataType) -> tuple[str, str]:
    """``(column type, COPY type)`` for an Arrow type."""
    import pyarrow as pa
    import pyarrow.types as t

    if t.is_string(arrow_type) or t.is_large_string(arrow_type):
        return "text", "text"
    if t.is_boolean(arrow_type):
        return "boolean", "bool"
    if t.is_int8(arrow_type) or t.is_int16(arrow_type) or t.is_uint8(arrow_type):
        return "smallint", "int2"
    if t.is_int32(arrow_type) or t.is_uint16(arrow_type):
        return "integer", "int4"
    if t.is_integer(arrow_type):
        return "bigint", "int8"
    if t.is_float32(arrow_type):
        return "real", "float4"
    if t.is_floating(arrow_type):
        return "double precision", "float8"
    if t.is_decimal(arrow_type):
        assert isinstance(arrow_type, pa.Decimal128Type | pa.Decimal256Type)
        return f"numeric({arrow_type.precision},{arrow_type.scale})", "numeric"
    if t.is_timestamp(arrow_type):
        assert isinstance(arrow_type, pa.TimestampType)
        if arrow_type.tz:
            return "timestamp with time zone", "timestamptz"
        return "timestamp without time zone", "timestamp"
    if t.is_date(arrow_type):
        return "date", "date"
    if t.is_time(arrow_type):
        return "time without time zone", "time"
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type) or t.is_fixed_size_binary(arrow_type):
        return "bytea", "bytea"
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        assert isinstance(arrow_type, pa.ListType | pa.LargeListType)
        item, item_copy = postgres_type(arrow_type.value_type)
        if item == JSONB or item.endswith("[]"):
            return JSONB, JSONB  # PostgreSQL arrays are rectangular and typed: lists of lists or structs are JSON.
        return f"{item}[]", f"{item_copy}[]"
    return JSONB, JSONB  # structs, maps and anything else: as JSON


def columns_for(schema: pa.Schema) -> list[Column]:
    """The PostgreSQL columns of an Arrow schema, in its order."""
    return [Column(field.name, *postgres_type(field.type)) for field in schema]


def check_compatible(table: str, existing: Mapping[str, str], wanted: Sequence[Column]) -> list[Column]:
    """The columns to add to ``existing`` (name -> type); a SchemaChangeError for any other change."""
    wanted_by_name = {column.name: column for column in wanted}
    for name, current in existing.items():
        if name not in wanted_by_name:
            raise SchemaChangeError(
                f"table {table}: column '{name}' is no longer in the processed table; "
                "run 'cdp load run --full-refresh' to rebuild it"
            )
        if wanted_by_name[name].type != current:
            raise SchemaChangeError(
                f"table {table}: column '{name}' changed from {current} to {wanted_by_name[name].type}; "
                "run 'cdp load run --full-refresh' to rebuild it"
            )
    return [column for column in wanted if column.name not in existing]
