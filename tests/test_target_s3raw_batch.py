"""Singer BATCH messages: JSONL (plain or gzip) and Parquet manifests, local or S3, validated like RECORDs."""

from __future__ import annotations

import gzip
import io
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from plugins.storage import ObjectStore
from tests.s3raw_support import CUSTOMERS_SCHEMA, dead_letters, raw_records, run_target, schema_message, zone_config

RECORDS = [{"id": f"c{i}", "age": i, "address": {"city": "Lyon"}} for i in range(6)]


def batch_message(encoding: dict[str, Any], manifest: list[str]) -> dict[str, Any]:
    return {"type": "BATCH", "stream": "customers", "encoding": encoding, "manifest": manifest}


def jsonl(records: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def test_gzip_jsonl_batch_files_land_and_bad_records_go_to_the_dlq(store_url: str) -> None:
    store = ObjectStore(store_url)
    first = store.write_bytes("batches/part-1.jsonl.gz", gzip.compress(jsonl(RECORDS[:3])))
    bad = [{"id": "bad", "age": "old"}]
    second = store.write_bytes("batches/part-2.jsonl.gz", gzip.compress(jsonl(RECORDS[3:] + bad) + b"not json\n"))
    config = zone_config(store_url)

    run_target(
        config,
        [
            schema_message("customers", CUSTOMERS_SCHEMA),
            batch_message({"format": "jsonl", "compression": "gzip"}, [first, second]),
        ],
    )

    landed = raw_records(config)
    assert sorted(r["id"] for r in landed) == [r["id"] for r in RECORDS]
    assert all(r["_cdp_schema_version"] == 1 for r in landed)
    letters = dead_letters(config)
    assert sorted(d["error_type"] for d in letters) == ["parse_error", "schema_validation"]
    assert next(d for d in letters if d["error_type"] == "parse_error")["context"]["manifest"] == second


def test_plain_jsonl_batch_file_as_a_file_url(tmp_path: Any) -> None:
    path = tmp_path / "part.jsonl"
    path.write_bytes(jsonl(RECORDS))
    config = zone_config(str(tmp_path / "zones"))

    run_target(
        config,
        [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "jsonl"}, [f"file://{path}"])],
    )

    assert sorted(r["id"] for r in raw_records(config)) == [r["id"] for r in RECORDS]


def test_parquet_batch_files_land_with_the_same_validation(store_url: str) -> None:
    store = ObjectStore(store_url)
    buffer = io.BytesIO()
    rows = [{"id": r["id"], "age": r["age"]} for r in RECORDS] + [{"id": "neg", "age": None}]
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    url = store.write_bytes("batches/part-1.parquet", buffer.getvalue())
    config = zone_config(store_url)

    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "parquet"}, [url])])

    landed = {r["id"]: r for r in raw_records(config)}
    assert sorted(landed) == sorted(row["id"] for row in rows)
    assert landed["c2"]["age"] == 2
    assert dead_letters(config) == []


def test_parquet_records_that_break_the_schema_go_to_the_dlq(tmp_path: Any) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "c1", "age": "old"}, {"id": "c2", "age": "new"}]), path)
    config = zone_config(str(tmp_path / "zones"))

    run_target(
        config, [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "parquet"}, [str(path)])]
    )

    assert raw_records(config) == []
    assert sorted(d["record"]["id"] for d in dead_letters(config)) == ["c1", "c2"]
