"""The lake engine's entry point: a segment's members from the processed zone's Iceberg tables, through Spark.

For tenants whose profiles outgrow one database: the same criteria as the PostgreSQL engine, compiled by
:mod:`activators.segments.compile_spark`, over the current snapshots of ``customers``, ``customer_metrics`` and
``customer_events``. The ids come back to the driver as one Arrow column, which the store copies into PostgreSQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from activators.segments.compile_spark import LakeTables, members_frame
from activators.segments.fields import FieldCatalog

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

    from activators.segments.model import Segment
    from plugins.transforms.catalog import ProcessedZone

MEMBER_COLUMN = "customer_id"


def lake_member_ids(segment: Segment, tenant: str, zone: ProcessedZone, spark: SparkSession) -> pa.Table:
    """The ids of ``segment``'s members in ``tenant`` (one string column ``customer_id``, sorted), from the processed
    zone ``zone``: the fields checked against the tables' Iceberg schemas, the tables read once."""
    import pyarrow as pa

    catalog = zone.open()
    fields = FieldCatalog.from_iceberg(catalog, tenant)
    frame = members_frame(segment, LakeTables.read(spark, catalog, tenant), fields)
    ids = frame.orderBy(MEMBER_COLUMN).toArrow()
    return pa.table({MEMBER_COLUMN: ids.column(MEMBER_COLUMN).cast(pa.string())})
