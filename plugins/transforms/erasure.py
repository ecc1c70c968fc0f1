"""The erasure list: tombstones of erased people's identifiers, and the filter every transform's output goes through.

Tombstones live in the tenant's processed zone as the Iceberg table ``erasures`` (``id_type``, ``id_value``,
``erased_at``), with the identifiers normalised exactly as the transforms normalise them (emails trimmed and
lower-cased, phones E.164, provider ids as the provider writes them). :func:`drop_erased` removes every row one of
them matches, so reprocessing the raw zone never brings an erased person back. The command that erases a person
everywhere comes later; it adds its tombstones with :func:`add_tombstones`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from plugins.core.errors import CdpError
from plugins.descriptors import ErasureKey

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyspark.sql import DataFrame, SparkSession

ERASURES_TABLE = "erasures"
TOMBSTONE_SCHEMA = "id_type string, id_value string, erased_at timestamp"


class ErasureError(CdpError):
    """A tombstone that cannot be stored: an empty identifier, or an email or phone that does not normalise."""


@dataclass(frozen=True)
class Tombstone:
    """One erased identifier, normalised (build it with :meth:`email`, :meth:`phone` or :meth:`provider_id`)."""

    id_type: str
    id_value: str
    erased_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def email(cls, address: str) -> Tombstone:
        """An erased email address, trimmed and lower-cased like the transforms do."""
        value = address.strip().lower()
        if "@" not in value:
            raise ErasureError(f"'{address}' is not an email address; give the address the person used")
        return cls("email", value)

    @classmethod
    def phone(cls, number: str, default_region: str | None = None) -> Tombstone:
        """An erased phone number, in E.164 like the transforms write it."""
        import phonenumbers

        try:
            parsed = phonenumbers.parse(number, default_region)
        except phonenumbers.NumberParseException as exc:
            raise ErasureError(f"'{number}' is not a phone number ({exc}); give it with its +country code") from None
        return cls("phone", phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))

    @classmethod
    def provider_id(cls, id_type: str, value: str) -> Tombstone:
        """An erased provider id: ``id_type`` like ``stripe_customer``, ``shopify_customer``, ``salesforce_contact``."""
        if not id_type or not value.strip():
            raise ErasureError("a provider id tombstone needs its type (e.g. stripe_customer) and its value")
        return cls(id_type, value.strip())


def erasure_table(catalog: SqlCatalog, tenant: str) -> Table:
    """The tenant's ``erasures`` table, created on first use."""
    from pyspark.sql.types import StructType

    from plugins.transforms.catalog import create_table

    schema = StructType.fromDDL(TOMBSTONE_SCHEMA)
    assert isinstance(schema, StructType)  # A DDL column list always parses to a struct.
    return create_table(catalog, tenant, ERASURES_TABLE, schema)


def add_tombstones(spark: SparkSession, table: Table, tombstones: Iterable[Tombstone]) -> int:
    """Append ``tombstones`` to the erasure table in one snapshot; returns how many were added."""
    from plugins.transforms.commit import commit_files, write_data_files

    rows = [(t.id_type, t.id_value, t.erased_at.astimezone(UTC)) for t in tombstones]  # Aware: no local-time shift.
    if not rows:
        return 0
    frame = spark.createDataFrame(rows, TOMBSTONE_SCHEMA)
    commit_files(table, add=write_data_files(frame, table))
    return len(rows)


def read_tombstones(spark: SparkSession, table: Table) -> DataFrame:
    """Every tombstone of the erasure table (``id_type``, ``id_value``, ``erased_at``)."""
    from plugins.transforms.table_reader import read_table

    return read_table(spark, table).select("id_type", "id_value", "erased_at")


class ErasureSplit(NamedTuple):
    """A transform's output split by the erasure list: the rows to write, and the erased rows (count them)."""

    kept: DataFrame
    erased: DataFrame


#: The column :func:`mark_erased` adds: whether a tombstone names one of the row's identifiers.
ERASED_COLUMN = "_cdp_erased"


def mark_erased(df: DataFrame, tombstones: DataFrame, keys: Sequence[ErasureKey]) -> DataFrame:
    """``df`` with :data:`ERASED_COLUMN`, true where one of the row's identifiers (any of ``keys``) has a tombstone."""
    from pyspark.sql import functions as F

    distinct = tombstones.select("id_type", "id_value").distinct()
    marked = df
    markers = []
    for index, key in enumerate(keys):
        type_name, value_name, marker = (
            f"_cdp_erased_type_{index}",
            f"_cdp_erased_value_{index}",
            f"_cdp_erased_{index}",
        )
        own_type = F.lit(key.id_type) if key.id_type is not None else F.col(str(key.type_column))
        found = distinct.select(
            F.col("id_type").alias(type_name), F.col("id_value").alias(value_name), F.lit(True).alias(marker)
        )
        condition = (own_type == F.col(type_name)) & (F.col(key.value_column) == F.col(value_name))
        marked = marked.join(found, condition, "left").drop(type_name, value_name)
        markers.append(F.coalesce(F.col(marker), F.lit(False)))
    erased_flag = F.greatest(*markers) if len(markers) > 1 else (markers[0] if markers else F.lit(False))
    return marked.withColumn(ERASED_COLUMN, erased_flag).drop(*[f"_cdp_erased_{i}" for i in range(len(keys))])


def drop_erased(df: DataFrame, tombstones: DataFrame, keys: Sequence[ErasureKey]) -> ErasureSplit:
    """``df`` without the rows whose identifier (any of ``keys``) has a tombstone, and those rows apart."""
    from pyspark.sql import functions as F

    marked = mark_erased(df, tombstones, keys)
    kept = marked.where(~F.col(ERASED_COLUMN)).drop(ERASED_COLUMN)
    erased = marked.where(F.col(ERASED_COLUMN)).drop(ERASED_COLUMN)
    return ErasureSplit(kept, erased)
