"""The raw-zone layout and writer: keys, partitions, file format and JSON encoding."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from plugins.core.errors import ConfigError
from plugins.core.layout import dlq_batch_key, parse_batch_key, raw_batch_key, sanitize_stream_name
from plugins.core.raw_zone import RawZoneWriter, read_batch
from plugins.core.serialization import dumps
from plugins.core.storage import ObjectStore

LANDED = datetime(2026, 3, 7, 9, 5, 1, 123456, tzinfo=UTC)


def test_raw_key_follows_the_layout() -> None:
    key = raw_batch_key("acme", "stripe", "customers", LANDED)
    prefix, name = key.rsplit("/", 1)
    assert prefix == "acme/stripe/year=2026/month=03/day=07"
    assert name.startswith("customers_20260307T090501123456Z_")
    assert name.endswith(".ndjson.gz")


def test_dlq_key_adds_the_error_type_folder() -> None:
    key = dlq_batch_key("acme", "stripe", "schema_validation", "customers", LANDED)
    assert key.startswith("acme/stripe/schema_validation/year=2026/month=03/day=07/customers_")


def test_partition_date_is_utc() -> None:
    from datetime import timedelta, timezone

    late_evening_in_new_york = datetime(2026, 3, 7, 22, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert "/day=08/" in raw_batch_key("acme", "stripe", "s", late_evening_in_new_york)


def test_keys_are_unique_for_the_same_instant() -> None:
    assert raw_batch_key("a", "b", "s", LANDED) != raw_batch_key("a", "b", "s", LANDED)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ("customers", "customers"),
        ("Public-Customers.v2", "public_customers_v2"),
        ("Ärger / Über", "rger_ber"),
        ("__x__", "x"),
        ("$$$", "stream"),
    ],
)
def test_stream_names_are_sanitised(stream: str, expected: str) -> None:
    assert sanitize_stream_name(stream) == expected


def test_batch_keys_parse_back_into_their_parts() -> None:
    raw = parse_batch_key(raw_batch_key("acme", "stripe", "Customers", LANDED))
    assert (raw.tenant, raw.provider, raw.error_type, raw.stream, raw.landed_at) == (
        "acme",
        "stripe",
        None,
        "customers",
        LANDED,
    )
    dlq = parse_batch_key(dlq_batch_key("acme", "stripe", "parse_error", "orders", LANDED))
    assert dlq.error_type == "parse_error"


def test_keys_outside_the_layout_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a batch key"):
        parse_batch_key("acme/stripe/notes.txt")


@pytest.mark.parametrize("tenant", ["", "Acme", "a/b", "-x", "acme corp"])
def test_bad_tenant_names_fail_naming_the_setting(tenant: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match="setting 'tenant'"):
        RawZoneWriter(ObjectStore(str(tmp_path)), tenant=tenant, provider="stripe")


def test_decimals_are_json_numbers_with_every_digit() -> None:
    encoded = dumps({"amount": Decimal("12345678901234567890.0123456789"), "nan": Decimal("NaN")})
    assert encoded == b'{"amount":12345678901234567890.0123456789,"nan":null}'


def test_datetimes_are_iso_8601() -> None:
    assert dumps({"at": LANDED}) == b'{"at":"2026-03-07T09:05:01.123456+00:00"}'


def test_writer_lands_one_gzip_ndjson_object_per_batch(store: ObjectStore) -> None:
    writer = RawZoneWriter(store, tenant="acme", provider="stripe")
    records = [{"id": f"cus_{n}", "name": "Zoë 李", "balance": Decimal("1.50")} for n in range(3)]
    batch = writer.write_batch("customers", records, when=LANDED)
    assert batch.record_count == 3
    assert [info.key for info in store.list("acme/stripe")] == [batch.key]
    lines = gzip.decompress(store.read_bytes(batch.key)).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": f"cus_{n}", "name": "Zoë 李", "balance": 1.5} for n in range(3)
    ]
    assert read_batch(store, batch.key)[0]["id"] == "cus_0"


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "\nacme", "ac\nme"])
def test_names_with_a_newline_are_refused(name: str) -> None:
    from plugins.core.layout import validate_name

    with pytest.raises(ConfigError, match="lower-case letters"):
        validate_name("tenant", name)


def test_a_batch_key_whose_file_name_ends_in_a_newline_is_not_in_the_layout() -> None:
    key = raw_batch_key("acme", "stripe", "customers", LANDED)
    with pytest.raises(ValueError, match="not a batch key"):
        parse_batch_key(key + "\n")


def test_integers_beyond_64_bits_are_written_and_read_back_exactly(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    writer = RawZoneWriter(store, tenant="acme", provider="stripe")
    record = {"id": "c1", "balance": 2**70, "small": 1, "note": "12345678901234567890 in a string"}
    batch = writer.write_batch("customers", [record], when=LANDED)

    assert read_batch(store, batch.key) == [record]
    assert isinstance(read_batch(store, batch.key)[0]["balance"], int)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1, {"b": float("nan")}]}, "nan at $.a[1].b is not JSON"),
        ({"a": Decimal("-Infinity")}, "-Infinity at $.a is not JSON"),
        ({"a": "\ud800"}, "a lone surrogate (\\u escape) at $.a is not valid Unicode"),
        ({"a": [1.5, "é", Decimal("2.5")]}, None),
    ],
)
def test_values_json_cannot_carry_are_found_with_their_path(value: object, problem: str | None) -> None:
    from plugins.core.serialization import non_json_value

    assert non_json_value(value) == problem


@pytest.mark.parametrize("text", [b"not json", b'{"a": 12345678901234567890', "{'a': 1}"])
def test_exact_loads_raises_orjsons_error_for_text_that_is_not_json(text: bytes | str) -> None:
    import orjson

    from plugins.core.serialization import loads

    with pytest.raises(orjson.JSONDecodeError):
        loads(text)
