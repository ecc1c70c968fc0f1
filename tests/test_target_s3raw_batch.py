"""Singer BATCH messages: JSONL (plain or gzip) and Parquet manifests, local or S3, validated like RECORDs."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import re
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plugins.core.storage import ObjectStore
from targets.s3raw.batch_files import BatchLimits, BatchManifestError, read_batch_manifest, sdk_default_batch_root
from tests.s3raw_support import (
    CUSTOMERS_SCHEMA,
    dead_letters,
    raw_records,
    run_target,
    schema_message,
    state_message,
    zone_config,
)

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
    config = zone_config(store_url, batch_allowed_prefixes=[f"{store_url}/batches"])

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
    config = zone_config(str(tmp_path / "zones"), batch_config={"storage": {"root": f"file://{tmp_path}"}})

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
    config = zone_config(store_url, batch_allowed_prefixes=[f"{store_url}/batches"])

    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "parquet"}, [url])])

    landed = {r["id"]: r for r in raw_records(config)}
    assert sorted(landed) == sorted(row["id"] for row in rows)
    assert landed["c2"]["age"] == 2
    assert dead_letters(config) == []


def test_parquet_records_that_break_the_schema_go_to_the_dlq(tmp_path: Any) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "c1", "age": "old"}, {"id": "c2", "age": "new"}]), path)
    config = zone_config(str(tmp_path / "zones"), batch_allowed_prefixes=[str(tmp_path)])

    run_target(
        config, [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "parquet"}, [str(path)])]
    )

    assert raw_records(config) == []
    assert sorted(d["record"]["id"] for d in dead_letters(config)) == ["c1", "c2"]


def _batch_run(tmp_path: Path, manifest: list[str], encoding: dict[str, Any] | None = None, **settings: Any) -> Any:
    config = zone_config(str(tmp_path / "zones"), batch_allowed_prefixes=[str(tmp_path / "batches")], **settings)
    messages = [
        schema_message("customers", CUSTOMERS_SCHEMA),
        batch_message(encoding or {"format": "jsonl"}, manifest),
        state_message({"done": True}),
    ]
    return config, messages


@pytest.fixture
def batches(tmp_path: Path) -> Path:
    folder = tmp_path / "batches"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    "where",
    [
        "/etc/passwd",
        "file:///etc/passwd",
        "batches/part.jsonl",  # relative
        "{tmp}/batches/../secret.jsonl",  # escapes the folder
        "{tmp}/batches/link.jsonl",  # a symlink out of the folder
        "{tmp}/batches/fifo.jsonl",  # not a regular file
        "/dev/zero",
        "{tmp}/batches-other/part.jsonl",  # shares the prefix's text, not its folder
        "http://127.0.0.1:9/part.jsonl",
    ],
)
def test_batch_locations_outside_the_allowed_folder_are_refused_with_one_line(
    tmp_path: Path, batches: Path, where: str
) -> None:
    (tmp_path / "secret.jsonl").write_bytes(jsonl(RECORDS))
    (batches / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    os.mkfifo(batches / "fifo.jsonl")
    (tmp_path / "batches-other").mkdir()
    (tmp_path / "batches-other" / "part.jsonl").write_bytes(jsonl(RECORDS))
    config, messages = _batch_run(tmp_path, [where.format(tmp=tmp_path)])

    with pytest.raises(BatchManifestError) as caught:
        run_target(config, messages)
    assert "\n" not in str(caught.value)
    assert raw_records(config) == []


def test_by_default_only_the_sdk_default_batch_folder_is_read(tmp_path: Path, batches: Path) -> None:
    (batches / "part.jsonl").write_bytes(jsonl(RECORDS))
    config = zone_config(str(tmp_path / "zones"))
    message = batch_message({"format": "jsonl"}, [str(batches / "part.jsonl")])
    with pytest.raises(BatchManifestError, match=re.escape(f"({sdk_default_batch_root()})")):
        run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), message])

    default_root = Path(sdk_default_batch_root())
    default_root.mkdir(parents=True, exist_ok=True)
    part = default_root / f"test-{os.getpid()}-{tmp_path.name}.jsonl"
    part.write_bytes(jsonl(RECORDS))
    try:
        run_target(
            config, [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "jsonl"}, [part.as_uri()])]
        )
    finally:
        part.unlink()
    assert len(raw_records(config)) == len(RECORDS)


@pytest.mark.parametrize(
    ("name", "content", "encoding", "problem"),
    [
        ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", {"format": "jsonl", "compression": "gzip"}, "gzip"),
        (
            "cut.jsonl.gz",
            gzip.compress(b'{"id": "c1"}\n' * 1000)[:-20],
            {"format": "jsonl", "compression": "gzip"},
            "gzip",
        ),
        ("bad.parquet", b"PAR1 this is not parquet PAR1", {"format": "parquet"}, "Parquet"),
        (
            "bomb.jsonl.gz",
            gzip.compress(b" " * 5_000_000),
            {"format": "jsonl", "compression": "gzip"},
            "max_batch_decompressed_bytes",
        ),
        ("big.jsonl", b'{"id": "c1"}\n' * 10_000, {"format": "jsonl"}, "max_batch_file_bytes"),
    ],
    # Named: gzip's header holds the time, and xdist's workers must collect the same test ids.
    ids=["not-gzip", "cut-gzip", "not-parquet", "gzip-bomb", "too-big"],
)
def test_an_unreadable_batch_file_goes_to_the_dlq_and_the_run_goes_on(
    tmp_path: Path, batches: Path, name: str, content: bytes, encoding: dict[str, Any], problem: str, capsys: Any
) -> None:
    (batches / name).write_bytes(content)
    (batches / "good.jsonl").write_bytes(jsonl(RECORDS))
    good_encoding = {"format": "jsonl"}
    config, _ = _batch_run(tmp_path, [], max_batch_decompressed_bytes=1_000_000, max_batch_file_bytes=100_000)
    messages = [
        schema_message("customers", CUSTOMERS_SCHEMA),
        batch_message(encoding, [str(batches / name)]),
        batch_message(good_encoding, [str(batches / "good.jsonl")]),
        state_message({"done": True}),
    ]

    _, states = run_target(config, messages, capsys)

    assert states == [{"done": True}]
    assert sorted(r["id"] for r in raw_records(config)) == [r["id"] for r in RECORDS]
    [letter] = dead_letters(config)
    assert problem in letter["error_message"]
    assert letter["context"]["manifest"] == str(batches / name)
    assert letter["record"] is None


def test_a_parquet_nan_is_not_landed_as_null(tmp_path: Path, batches: Path) -> None:
    schema = {
        **CUSTOMERS_SCHEMA,
        "properties": {**CUSTOMERS_SCHEMA["properties"], "score": {"type": ["number", "null"]}},
    }
    pq.write_table(
        pa.Table.from_pylist([{"id": "c1", "score": float("nan")}, {"id": "c2", "score": 1.5}]), batches / "p.parquet"
    )
    config, _ = _batch_run(tmp_path, [])
    run_target(
        config,
        [schema_message("customers", schema), batch_message({"format": "parquet"}, [str(batches / "p.parquet")])],
    )

    assert [(r["id"], r["score"]) for r in raw_records(config)] == [("c2", 1.5)]
    [letter] = dead_letters(config)
    assert letter["error_message"].startswith("nan at $.score is not JSON")


def test_an_oversized_or_missing_batch_file_goes_to_the_dlq_on_every_store(store_url: str) -> None:
    store = ObjectStore(store_url)
    big = store.write_bytes("batches/big.jsonl", jsonl(RECORDS) * 100)
    good = store.write_bytes("batches/good.jsonl", jsonl(RECORDS))
    missing = good.replace("good.jsonl", "missing.jsonl")
    config = zone_config(store_url, batch_allowed_prefixes=[f"{store_url}/batches"], max_batch_file_bytes=10_000)

    run_target(
        config,
        [schema_message("customers", CUSTOMERS_SCHEMA), batch_message({"format": "jsonl"}, [big, missing, good])],
    )

    assert sorted(r["id"] for r in raw_records(config)) == [r["id"] for r in RECORDS]
    letters = {letter["context"]["manifest"]: letter["error_message"] for letter in dead_letters(config)}
    assert letters == {
        big: "batch file is over max_batch_file_bytes (10000)",
        missing: "batch file does not exist",
    }


def _peak_bytes_reading_first_records(url: str, encoding: dict[str, Any], folder: Path) -> int:
    tracemalloc.start()
    try:
        items = read_batch_manifest(url, encoding, limits=BatchLimits(allowed_prefixes=(str(folder),)))
        first = list(itertools.islice(items, 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(first) == 10
    assert all(item.error is None for item in first)
    return peak


def test_a_gzip_file_of_millions_of_tiny_lines_is_read_a_line_at_a_time(tmp_path: Path) -> None:
    # 3M lines of "{}" compress to a few KiB and are well under the decompressed cap, but a list of every line
    # took some 40 bytes per line: memory must stay bounded by the file, not by its count of records.
    batch = tmp_path / "tiny.jsonl.gz"
    batch.write_bytes(gzip.compress(b"{}\n" * 3_000_000, 9))
    peak = _peak_bytes_reading_first_records(batch.as_uri(), {"format": "jsonl", "compression": "gzip"}, tmp_path)
    assert peak < 20 * 1024 * 1024


def test_a_dictionary_encoded_parquet_file_of_a_million_rows_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    # Its metadata declares a few KiB of column data; as Python rows all at once it took hundreds of MB.
    batch = tmp_path / "rows.parquet"
    rows = 1_000_000
    pq.write_table(pa.table({"id": pa.array(["x"] * rows).dictionary_encode()}), batch, compression="zstd")
    assert batch.stat().st_size < 64 * 1024
    peak = _peak_bytes_reading_first_records(batch.as_uri(), {"format": "parquet"}, tmp_path)
    assert peak < 40 * 1024 * 1024


def test_a_parquet_file_whose_values_decode_past_the_cap_goes_to_the_dlq_unread(tmp_path: Path) -> None:
    batch = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": pa.array(["x"] * 200_000).dictionary_encode()}), batch, compression="zstd")
    limits = BatchLimits(allowed_prefixes=(str(tmp_path),), max_decompressed_bytes=1024 * 1024)
    items = list(read_batch_manifest(batch.as_uri(), {"format": "parquet"}, limits=limits))
    assert len(items) == 1
    assert items[0].error is not None
    assert "max_batch_decompressed_bytes" in items[0].error


def test_a_parquet_decimal_beyond_64_bits_is_read_as_the_exact_integer(tmp_path: Path) -> None:
    batch = tmp_path / "big.parquet"
    value = Decimal("123456789012345678901234")
    pq.write_table(pa.table({"n": pa.array([value], pa.decimal128(38, 0))}), batch)
    limits = BatchLimits(allowed_prefixes=(str(tmp_path),))
    items = list(read_batch_manifest(batch.as_uri(), {"format": "parquet"}, limits=limits))
    assert [item.record for item in items] == [{"n": 123456789012345678901234}]
    assert isinstance(items[0].record["n"], int)


def test_a_batch_line_too_deep_for_its_dead_letter_is_a_parse_error_with_its_text(tmp_path: Path) -> None:
    # A BATCH line is the record itself: its dead letter wraps it in one more level than orjson writes (254).
    batch = tmp_path / "deep.jsonl"
    line = b'{"a":' * 254 + b"1" + b"}" * 254
    batch.write_bytes(line + b"\n" + b'{"id":"c1"}\n')
    limits = BatchLimits(allowed_prefixes=(str(tmp_path),))
    items = list(read_batch_manifest(batch.as_uri(), {"format": "jsonl"}, limits=limits))
    assert items[0].error is not None
    assert "nests deeper than 253 levels" in items[0].error
    assert items[0].raw == line
    assert items[1].record == {"id": "c1"}
