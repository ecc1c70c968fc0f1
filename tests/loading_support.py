"""Iceberg tables for the loader tests, committed the way the transforms commit (data files, then one snapshot).

Data files are written with pyarrow (no Spark needed: ``commit_files`` takes any Parquet file written under the
table) and committed as appends or file-level replaces, exactly as a merge commits them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from plugins.transforms.commit import commit_files

START = datetime(2026, 1, 15, tzinfo=UTC)


def customers_schema() -> Any:
    from pyspark.sql.types import (
        ArrayType,
        DecimalType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    custom = StructType([StructField("plan", StringType()), StructField("seats", LongType())])
    return StructType(
        [
            StructField("customer_id", StringType()),
            StructField("email", StringType()),
            StructField("phone", StringType()),
            StructField("first_name", StringType()),
            StructField("lifetime_value", DecimalType(38, 9)),
            StructField("tags", ArrayType(StringType())),
            StructField("custom_fields", custom),
            StructField("updated_at", TimestampType()),
        ]
    )


def customer(n: int, *, version: int = 0) -> dict[str, Any]:
    return {
        "customer_id": f"cus_{n:05d}",
        "email": f"person{n}@example.org",
        "phone": f"+1555{n:07d}",
        "first_name": f"Name{n}" if not version else f"Name{n}v{version}",
        "lifetime_value": Decimal(n) / 4,
        "tags": ["vip", f"t{n % 3}"] if n % 2 else [],
        "custom_fields": {"plan": "pro" if n % 2 else "free", "seats": n},
        "updated_at": START + timedelta(hours=n + version),
    }


def write_file(table: Any, rows: list[dict[str, Any]]) -> str:
    """One Parquet data file of ``rows`` under the table's location (committed separately)."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    url = f"{table.location().rstrip('/')}/data/test-{uuid.uuid4().hex}.parquet"
    path = Path(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema_to_pyarrow(table.schema(), include_field_ids=False)), path)
    return url


def commit(table: Any, rows: list[dict[str, Any]], remove: Sequence[str] = ()) -> tuple[int, str]:
    path = write_file(table, rows)
    result = commit_files(table, add=[path], remove=remove)
    table.refresh()
    return result.snapshot_id, path
