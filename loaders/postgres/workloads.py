"""The indexes (and the partitioning) of the tables the serving workloads query, by table name.

Applied only where the columns exist, so a table whose transform does not produce a column simply lacks its index.
Every other table gets its primary key only.

- customers (profile look-ups, search by name, segments on custom fields): email, phone, customer_id; trigram
  (pg_trgm) on the name columns; GIN on the custom-field columns.
- orders (a customer's orders by time): (customer, ordered_at).
- events (a customer's timeline): partitioned by month of occurred_at; (customer, occurred_at).
- customer_metrics (segments on value and recency): lifetime_value, last_order_at.
- customer_events (segments' behavioural criteria: a customer's events of a type in a window): partitioned by month of
  occurred_at; (customer_id, type, occurred_at).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loaders.postgres.schema import JSONB

NAME_COLUMNS = ("first_name", "last_name", "full_name", "name", "display_name")
CUSTOM_FIELD_COLUMNS = ("custom_fields", "attributes", "traits", "properties")
CUSTOMER_COLUMNS = ("customer_id", "customer_id_value")


@dataclass(frozen=True)
class IndexSpec:
    """One index: its purpose (part of its name), columns, access method and operator class."""

    purpose: str
    columns: tuple[str, ...]
    method: str = "btree"
    opclass: str | None = None


@dataclass(frozen=True)
class TableWorkload:
    """What a table is queried for: its secondary indexes and the timestamp column it is partitioned by, if any."""

    indexes: tuple[IndexSpec, ...] = ()
    partition_by_month: str | None = None


def _by_customer_and_time(time_column: str) -> tuple[IndexSpec, ...]:
    return tuple(IndexSpec(f"{column}_time", (column, time_column)) for column in CUSTOMER_COLUMNS)


WORKLOADS: dict[str, TableWorkload] = {
    "customers": TableWorkload(
        indexes=(
            IndexSpec("email", ("email",)),
            IndexSpec("phone", ("phone",)),
            IndexSpec("customer_id", ("customer_id",)),
            *(IndexSpec(f"{column}_trgm", (column,), "gin", "gin_trgm_ops") for column in NAME_COLUMNS),
            *(IndexSpec(f"{column}_gin", (column,), "gin") for column in CUSTOM_FIELD_COLUMNS),
        )
    ),
    "orders": TableWorkload(indexes=_by_customer_and_time("ordered_at")),
    "events": TableWorkload(indexes=_by_customer_and_time("occurred_at"), partition_by_month="occurred_at"),
    "customer_metrics": TableWorkload(
        indexes=(IndexSpec("lifetime_value", ("lifetime_value",)), IndexSpec("last_order_at", ("last_order_at",)))
    ),
    "customer_events": TableWorkload(
        indexes=(IndexSpec("customer_type_time", ("customer_id", "type", "occurred_at")),),
        partition_by_month="occurred_at",
    ),
}


def workload(table: str, columns: Mapping[str, str], key: tuple[str, ...], *, trigram: bool) -> TableWorkload:
    """The indexes and partitioning that apply to ``table`` with ``columns`` (name -> PostgreSQL type).

    An index on the key alone is the primary key already; a trigram index needs pg_trgm (``trigram``) and a text
    column; a GIN index without an operator class a jsonb column; monthly partitions a timestamp column.
    """
    plan = WORKLOADS.get(table, TableWorkload())
    indexes = []
    for index in plan.indexes:
        types = [columns.get(column) for column in index.columns]
        if None in types or index.columns == key:
            continue
        if index.opclass == "gin_trgm_ops" and (not trigram or types != ["text"]):
            continue
        if index.method == "gin" and index.opclass is None and types != [JSONB]:
            continue
        indexes.append(index)
    partition = plan.partition_by_month
    if partition is not None and not columns.get(partition, "").startswith("timestamp"):
        partition = None
    return TableWorkload(tuple(indexes), partition)
