"""The raw zone read into Spark with explicit schemas from the registry: every version merged, local and S3 alike."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DecimalType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from plugins.core.raw_zone import METADATA_COLUMNS, RawZoneWriter
from plugins.core.storage import ObjectStore
from plugins.transforms.raw_reader import list_raw_files, pending_raw_files, read_raw
from plugins.transforms.raw_schema import (
    CORRUPT_RECORD_COLUMN,
    SOURCE_FILE_COLUMN,
    RawSchemaError,
    record_struct,
    spark_type,
    subject_struct,
)
from schema_registry import SchemaRegistry
from tests.s3raw_support import record_message, run_target, schema_message, zone_config

V1: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "age": {"type": ["integer", "null"]},
        "created": {"type": ["string", "null"], "format": "date-time"},
        "address": {"type": ["object", "null"], "properties": {"city": {"type": ["string", "null"]}}},
        "metadata": {"type": ["object", "null"]},
    },
}
V2: dict[str, Any] = {  # A later version: a new property, and the address grows a field.
    "type": "object",
    "properties": {
        **V1["properties"],
        "balance": {"type": ["number", "null"]},
        "address": {
            "type": ["object", "null"],
            "properties": {"city": {"type": ["string", "null"]}, "zip": {"type": ["string", "null"]}},
        },
    },
}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, StringType()),
        ({"type": ["string", "null"], "format": "date-time"}, TimestampType()),
        ({"type": "string", "format": "date"}, DateType()),
        ({"type": "integer"}, LongType()),
        ({"type": "number"}, DecimalType(38, 9)),
        ({"type": ["integer", "number"]}, DecimalType(38, 9)),
        ({"type": "boolean"}, BooleanType()),
        ({"type": "object"}, StringType()),
        ({"type": "object", "additionalProperties": {"type": "string"}}, StringType()),
        ({"type": "array", "items": {"type": "integer"}}, ArrayType(LongType())),
        ({"type": "array"}, ArrayType(StringType())),
        ({"type": ["string", "integer"]}, StringType()),
        ({"anyOf": [{"type": "null"}, {"type": "string", "format": "date-time"}]}, TimestampType()),
        ({"anyOf": [{"type": "string"}, {"type": "object", "properties": {"a": {"type": "string"}}}]}, StringType()),
        ({}, StringType()),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/definitions/n"}},
                "definitions": {"n": {"type": "integer"}},
            },
            StructType([StructField("a", LongType())]),
        ),
        (
            {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "boolean"}}}]},
            StructType([StructField("a", LongType()), StructField("b", BooleanType())]),
        ),
    ],
)
def test_json_schema_types_map_to_spark_types(schema, expected) -> None:
    assert spark_type(schema) == expected


def test_a_recursive_reference_ends_as_json_text_instead_of_looping() -> None:
    node = {"type": "object", "properties": {"child": {"$ref": "#"}, "name": {"type": "string"}}}
    struct = spark_type(node)
    assert isinstance(struct, StructType)
    assert struct["child"].dataType == StructType(
        [StructField("child", StringType()), StructField("name", StringType())]
    )


def test_every_version_is_merged_with_widened_types_and_the_metadata_columns() -> None:
    older = {"type": "object", "properties": {"n": {"type": "integer"}, "when": {"type": "string", "format": "date"}}}
    newer = {
        "type": "object",
        "properties": {
            "n": {"type": "number"},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }

    struct = record_struct([older, newer])

    assert struct["n"].dataType == DecimalType(38, 9)
    assert struct["when"].dataType == TimestampType()
    assert struct["tags"].dataType == ArrayType(StringType())
    assert struct.fieldNames()[-len(METADATA_COLUMNS) :] == list(METADATA_COLUMNS)
    assert struct["_sdc_batched_at"].dataType == TimestampType()
    assert struct["_cdp_schema_version"].dataType == LongType()


def test_a_subject_without_a_registered_schema_says_how_to_get_one(tmp_path) -> None:
    registry = SchemaRegistry(ObjectStore(str(tmp_path / "registry")))
    with pytest.raises(RawSchemaError, match="cdp schema register"):
        subject_struct(registry, "acme", "stripe", "customers")


def land_two_versions(base: str) -> dict[str, Any]:
    """Raw batches of acme/stripe/customers written by the real target under two schema versions."""
    config = zone_config(base)
    first = [
        record_message(
            "customers",
            {
                "id": "c1",
                "email": "a@x.io",
                "age": 41,
                "created": "2026-01-02T03:04:05Z",
                "address": {"city": "Lyon"},
                "metadata": {"plan": "pro", "seats": 3},
            },
        ),
        record_message(
            "customers",
            {"id": "c2", "email": None, "age": None, "created": "2026-01-02T03:04:05.123456+02:00", "address": None},
        ),
    ]
    run_target(config, [schema_message("customers", V1), *first])
    second = [
        record_message(
            "customers", {"id": "c3", "email": "c@x.io", "balance": 12.5, "address": {"city": "Oslo", "zip": "0150"}}
        )
    ]
    run_target(config, [schema_message("customers", V2), *second])
    return config


@pytest.fixture(params=["local", "s3"])
def raw_base(request: pytest.FixtureRequest, tmp_path) -> str:
    return str(tmp_path) if request.param == "local" else str(request.getfixturevalue("s3_url"))


def test_raw_batches_of_every_version_read_with_the_merged_schema(spark, raw_base) -> None:
    config = land_two_versions(raw_base)
    raw = ObjectStore(config["raw_url"])
    registry = SchemaRegistry(ObjectStore(config["registry_url"]))
    files = list_raw_files(raw, "acme", "stripe", "customers")
    schema = subject_struct(registry, "acme", "stripe", "customers")

    frame = read_raw(spark, raw, [f.key for f in files], schema)
    rows = {row["id"]: row.asDict(recursive=True) for row in frame.collect()}

    assert len(files) == 2
    assert frame.columns == [*schema.fieldNames(), CORRUPT_RECORD_COLUMN, SOURCE_FILE_COLUMN]
    assert rows["c1"]["created"] == datetime(2026, 1, 2, 3, 4, 5)  # UTC (the session's zone), naive in Python.
    assert rows["c2"]["created"] == datetime(2026, 1, 2, 1, 4, 5, 123456)
    assert rows["c1"]["address"] == {"city": "Lyon", "zip": None}
    assert rows["c3"]["address"] == {"city": "Oslo", "zip": "0150"}
    assert rows["c3"]["balance"] == Decimal("12.500000000")
    assert rows["c1"]["metadata"] == '{"plan":"pro","seats":3}'
    assert {rows[i]["_cdp_schema_version"] for i in ("c1", "c2")} == {1}
    assert rows["c3"]["_cdp_schema_version"] == 2
    assert all(row["_sdc_batched_at"] is not None and row["_sdc_sequence"] is not None for row in rows.values())
    assert all(row[CORRUPT_RECORD_COLUMN] is None for row in rows.values())
    assert {row[SOURCE_FILE_COLUMN] for row in rows.values()} == {f.key for f in files}


def test_a_row_that_does_not_fit_the_schema_keeps_its_text_and_its_source(spark, raw_base) -> None:
    raw = ObjectStore(f"{raw_base}/raw")
    writer = RawZoneWriter(raw, tenant="acme", provider="stripe")
    batch = writer.write_batch(
        "customers", [{"id": "ok", "age": 3}, {"id": "bad", "age": "old"}], when=datetime(2026, 1, 5, tzinfo=UTC)
    )

    frame = read_raw(spark, raw, [batch.key], record_struct([V1]))
    rows = {row["id"]: row for row in frame.collect()}

    assert rows["ok"][CORRUPT_RECORD_COLUMN] is None
    assert '"age":"old"' in rows["bad"][CORRUPT_RECORD_COLUMN].replace(" ", "")
    assert rows["bad"][SOURCE_FILE_COLUMN] == batch.key


def test_only_the_subjects_own_batches_are_listed(tmp_path) -> None:
    raw = ObjectStore(str(tmp_path / "raw"))
    writer = RawZoneWriter(raw, tenant="acme", provider="stripe")
    mine = writer.write_batch("customers", [{"id": "1"}]).key
    writer.write_batch("charges", [{"id": "2"}])
    RawZoneWriter(raw, tenant="other", provider="stripe").write_batch("customers", [{"id": "3"}])
    raw.write_bytes("acme/stripe/notes.txt", b"not a batch")

    assert [f.key for f in list_raw_files(raw, "acme", "stripe", "customers")] == [mine]


def test_pending_files_are_the_subjects_batches_a_table_has_not_processed(tmp_path) -> None:
    raw = ObjectStore(str(tmp_path / "raw"))
    writer = RawZoneWriter(raw, tenant="acme", provider="stripe")
    done = writer.write_batch("customers", [{"id": "1"}], when=datetime(2026, 1, 1, tzinfo=UTC)).key
    new = writer.write_batch("customers", [{"id": "2"}], when=datetime(2026, 1, 2, tzinfo=UTC)).key

    assert [f.key for f in pending_raw_files(raw, "acme", "stripe", "customers", {done})] == [new]
