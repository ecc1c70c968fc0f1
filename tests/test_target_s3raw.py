"""target-s3raw: every record ends in the raw zone or the DLQ, batches flush on size, age and end, STATE waits."""

from __future__ import annotations

import io
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from singer_sdk.exceptions import MissingKeyPropertiesError, RecordsWithoutSchemaException

from plugins.connectors.testing import FakeClock
from plugins.core.errors import ConfigError
from plugins.core.raw_zone import METADATA_COLUMNS
from plugins.core.storage import ObjectStore
from schema_registry import SchemaRegistry, subject_name
from targets.s3raw.target import ProtocolError, TargetS3Raw
from tests.conftest import REPO_ROOT
from tests.s3raw_support import (
    CUSTOMERS_SCHEMA,
    dead_letters,
    encode,
    raw_by_stream,
    raw_records,
    read_objects,
    record_message,
    run_target,
    schema_message,
    state_message,
    zone_config,
)

ORDERS_SCHEMA = {"type": "object", "properties": {"id": {"type": "string"}, "total": {"type": "number"}}}


def test_count_conservation_per_stream(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = zone_config(store_url, batch_size=4, max_record_bytes=400)
    messages: list[Any] = [schema_message("customers", CUSTOMERS_SCHEMA), schema_message("orders", ORDERS_SCHEMA)]
    sent = {"customers": 0, "orders": 0}
    for i in range(9):  # valid
        messages.append(record_message("customers", {"id": f"c{i}", "age": i, "address": {"city": "Lyon"}}))
        sent["customers"] += 1
    for i in range(3):  # invalid: wrong types
        messages.append(record_message("customers", {"id": f"bad{i}", "age": "old", "email": 5}))
        sent["customers"] += 1
    for i in range(2):  # oversize
        messages.append(record_message("customers", {"id": f"big{i}", "email": "x" * 500}))
        sent["customers"] += 1
    for i in range(4):  # undeclared properties (kept in raw)
        messages.append(record_message("customers", {"id": f"u{i}", "plan": "pro", "address": {"zip": "1"}}))
        sent["customers"] += 1
    messages.append(state_message({"bookmark": 1}))
    for i in range(5):
        messages.append(record_message("orders", {"id": f"o{i}", "total": "n/a" if i == 0 else 9.5}))
        sent["orders"] += 1

    _, states = run_target(config, messages, capsys)

    raw = raw_by_stream(config)
    letters = dead_letters(config)
    for stream, count in sent.items():
        in_dlq = [letter for letter in letters if letter["stream"] == stream]
        assert len(raw.get(stream, [])) + len(in_dlq) == count, stream
    customers_dlq = sorted((d["error_type"], d["record"]["id"]) for d in letters if d["stream"] == "customers")
    assert customers_dlq == [
        ("record_too_large", "big0"),
        ("record_too_large", "big1"),
        ("schema_validation", "bad0"),
        ("schema_validation", "bad1"),
        ("schema_validation", "bad2"),
    ]
    assert len(raw["customers"]) == 13  # 9 valid + 4 with undeclared properties, kept as sent
    assert {r["plan"] for r in raw["customers"] if r["id"].startswith("u")} == {"pro"}
    assert all(r["_cdp_schema_version"] == 1 for records in raw.values() for r in records)
    assert states == [{"bookmark": 1}]


def test_raw_record_is_the_sent_record_plus_metadata_columns(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    sent = {"id": "c1", "email": "zoë@example.com", "age": 41, "address": {"city": "Kraków"}, "extra": [1.5, None]}
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), record_message("customers", dict(sent))])

    [landed] = raw_records(config)
    assert {k: v for k, v in landed.items() if k not in METADATA_COLUMNS} == sent
    assert set(METADATA_COLUMNS) <= set(landed)
    assert landed["_sdc_extracted_at"] == "2026-01-02T03:04:05+00:00"
    assert landed["_sdc_batched_at"] >= landed["_sdc_received_at"]
    assert landed["_cdp_schema_version"] == 1


def test_dead_letter_line_has_every_field_and_the_original_record(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    bad = {"id": "c1", "age": "forty", "email": 7, "address": {"city": 3}}
    target, _ = run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), record_message("customers", bad)])

    [letter] = dead_letters(config)
    assert letter["record"] == bad
    assert letter["error_type"] == "schema_validation"
    assert [e["path"] for e in letter["errors"]] == ["$.address.city", "$.age", "$.email"]
    assert letter["tenant"] == "acme"
    assert letter["provider"] == "stripe"
    assert letter["stream"] == "customers"
    assert letter["schema_version"] == 1
    assert letter["retry_count"] == 0
    assert letter["run_id"] == target.dlq.run_id
    assert letter["failed_at"].endswith("+00:00")
    [key] = read_objects(config["dlq_url"])
    assert key.startswith("acme/stripe/schema_validation/year=")


def test_lines_that_are_not_singer_messages_go_to_the_dlq_as_parse_error(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    messages: list[Any] = [
        schema_message("customers", CUSTOMERS_SCHEMA),
        b"this is not json",
        b'{"type": "RECORD", "stream": "customers", "record": {"id": "c1"',
        b'["a", "json", "array"]',
        b'{"type": "GOSSIP", "stream": "customers"}',
        b'{"no_type": true}',
        record_message("customers", {"id": "ok"}),
    ]
    run_target(config, messages)

    letters = dead_letters(config)
    assert sorted(d["error_type"] for d in letters) == ["parse_error"] * 5
    assert "this is not json" in [d.get("record_text") for d in letters]  # the line as sent; record is null
    assert None in [d["record"] for d in letters]
    assert {"type": "GOSSIP", "stream": "customers"} in [d["record"] for d in letters]
    assert sorted(d["context"]["line"] for d in letters) == [2, 3, 4, 5, 6]
    assert [r["id"] for r in raw_records(config)] == ["ok"]


def test_batches_are_flushed_every_batch_size_records(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path), batch_size=3)
    records = [record_message("customers", {"id": f"c{i}"}) for i in range(7)]
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), *records])

    sizes = sorted(len(lines) for lines in read_objects(config["raw_url"]).values())
    assert sizes == [1, 3, 3]


def test_batches_are_flushed_when_the_oldest_record_is_max_batch_age_seconds_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = zone_config(str(tmp_path), max_batch_age_seconds=0.2)
    clock = FakeClock(start=time.time())
    monkeypatch.setattr(TargetS3Raw, "clock", staticmethod(clock))

    def slow_input() -> Iterator[bytes]:
        yield from encode([schema_message("customers", CUSTOMERS_SCHEMA)]).splitlines(keepends=True)
        yield from encode([record_message("customers", {"id": "c0"})]).splitlines(keepends=True)
        clock.advance(0.3)
        yield from encode([record_message("customers", {"id": "c1"})]).splitlines(
            keepends=True
        )  # Its arrival triggers the age flush.

    target = TargetS3Raw(config=config)
    target.listen(slow_input())  # type: ignore[arg-type]

    assert sorted(len(lines) for lines in read_objects(config["raw_url"]).values()) == [1, 1]  # c0 aged out alone


def test_state_is_emitted_only_after_every_earlier_record_is_durable(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path), batch_size=2)
    target = TargetS3Raw(config=config)
    landed_when_emitted: list[tuple[dict[str, Any], int]] = []

    def capture(state: dict[str, Any]) -> None:
        landed_when_emitted.append((state, len(raw_records(config)) + len(dead_letters(config))))

    target.checkpoints._emit = capture
    messages: list[Any] = [schema_message("customers", CUSTOMERS_SCHEMA)]
    for i in range(1, 8):
        messages.append(record_message("customers", {"id": f"c{i}", "age": "bad" if i == 3 else i}))
        messages.append(state_message({"position": i}))
    target.listen(io.BytesIO(encode(messages)))

    assert landed_when_emitted, "no STATE was emitted"
    for state, durable in landed_when_emitted:
        assert durable >= state["position"], f"{state} emitted with only {durable} records durable"
    assert landed_when_emitted[-1][0] == {"position": 7}


def test_missing_required_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    del config["dlq_url"]
    with pytest.raises(ConfigError) as caught:
        TargetS3Raw(config=config)
    assert caught.value.setting == "dlq_url"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_size", 0),
        ("max_batch_age_seconds", -1),
        ("compression_level", 12),
        ("tenant", "Not Valid"),
        ("tenant", "acme\n"),
        ("max_record_bytes", "big"),
        ("dlq_alert_threshold", -1),
    ],
)
def test_malformed_setting_fails_at_start_naming_it(tmp_path: Path, setting: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        TargetS3Raw(config=zone_config(str(tmp_path), **{setting: value}))
    assert caught.value.setting == setting


def test_empty_stream_registers_its_schema_and_writes_no_batch(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    run_target(config, [schema_message("refunds", ORDERS_SCHEMA), state_message({"refunds": None})])

    registry = SchemaRegistry(ObjectStore(config["registry_url"]))
    assert registry.versions(subject_name("acme", "stripe", "refunds")) == [1]
    assert not Path(config["raw_url"]).exists() or not any(Path(config["raw_url"]).rglob("*.gz"))


def test_special_characters_in_stream_and_property_names_land_intact(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    schema = {
        "type": "object",
        "properties": {"_id": {"type": "string"}, "agent:os/version": {"type": "string"}, "naïve ☃": {}},
    }
    record = {"_id": "a1", "agent:os/version": "10.13", "naïve ☃": "snow"}
    run_target(
        config, [schema_message("Test:Special!Chars?", schema, ["_id"]), record_message("Test:Special!Chars?", record)]
    )

    grouped = raw_by_stream(config)
    assert list(grouped) == ["test_special_chars"]
    [landed] = grouped["test_special_chars"]
    assert {k: landed[k] for k in record} == record


def test_record_before_its_schema_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(RecordsWithoutSchemaException):
        run_target(zone_config(str(tmp_path)), [record_message("customers", {"id": "c1"})])


def test_two_streams_that_reduce_to_one_raw_zone_name_stop_the_run(tmp_path: Path) -> None:
    # public-users and public_users would otherwise share one subject and one set of raw files.
    messages = [
        schema_message("public-users", CUSTOMERS_SCHEMA),
        record_message("public-users", {"id": "c1"}),
        schema_message("public_users", CUSTOMERS_SCHEMA),
        record_message("public_users", {"id": "c2"}),
    ]
    with pytest.raises(ProtocolError, match="'public-users' and 'public_users' would share the raw-zone name"):
        run_target(zone_config(str(tmp_path)), messages)


def test_a_stream_name_too_long_for_a_file_name_is_one_clear_error(tmp_path: Path) -> None:
    name = "a" * 300
    with pytest.raises(ProtocolError, match="the name is over 128 characters"):
        run_target(zone_config(str(tmp_path)), [schema_message(name, CUSTOMERS_SCHEMA), record_message(name, {})])


def test_schema_without_properties_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="properties"):
        run_target(zone_config(str(tmp_path)), [schema_message("customers", {"type": "object"})])


def test_schema_that_is_not_json_schema_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="invalid SCHEMA"):
        run_target(
            zone_config(str(tmp_path)), [schema_message("c", {"type": "object", "properties": {"a": {"type": 5}}})]
        )


def test_record_without_its_key_properties_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(MissingKeyPropertiesError):
        run_target(
            zone_config(str(tmp_path)),
            [schema_message("customers", CUSTOMERS_SCHEMA), record_message("customers", {"email": "a@b.c"})],
        )


def test_state_messages_pass_through_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = zone_config(str(tmp_path))
    _, states = run_target(
        config,
        [schema_message("customers", CUSTOMERS_SCHEMA), state_message({"a": {"b": [1, 2]}}), state_message({"a": 2})],
        capsys,
    )
    assert states == [{"a": {"b": [1, 2]}}, {"a": 2}] or states == [{"a": 2}]
    assert orjson.dumps(states[-1]) == b'{"a":2}'


TARGET_CLI = str(REPO_ROOT / ".venv" / "bin" / "target-s3raw")


def _run_cli(tmp_path: Path, config: dict[str, Any], messages: list[Any]) -> subprocess.CompletedProcess[bytes]:
    config_path = tmp_path / "config.json"
    config_path.write_bytes(orjson.dumps(config))
    return subprocess.run(
        [TARGET_CLI, "--config", str(config_path)], input=encode(messages), capture_output=True, timeout=120
    )


def test_a_config_error_on_the_cli_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, zone_config(str(tmp_path), compression_level=12), [])

    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    [line] = [text for text in stderr.splitlines() if "error" in text.lower()]
    assert line == "target-s3raw: error: setting 'compression_level': 12 is not allowed: must be at most 9"


def test_a_stream_whose_records_all_went_to_the_dlq_fails_the_run_after_its_state(tmp_path: Path) -> None:
    messages = [
        schema_message("orders", ORDERS_SCHEMA),
        schema_message("refunds", ORDERS_SCHEMA),
        record_message("orders", {"id": "o1", "total": "not a number"}),
        record_message("refunds", {"id": "r1", "total": 5}),
        state_message({"bookmarks": {"orders": 1}}),
    ]
    result = _run_cli(tmp_path, zone_config(str(tmp_path)), messages)

    assert result.returncode == 1
    assert [orjson.loads(line) for line in result.stdout.splitlines()] == [{"bookmarks": {"orders": 1}}]
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert "alert.stream_all_rejected" in stderr
    assert "stream 'orders': all 1 records of this run went to the DLQ" in stderr
    assert '"all_rejected_streams":["orders"]' in stderr
    assert stderr.strip().splitlines()[-1].startswith("target-s3raw: error: every record of stream(s) orders went")

    quiet = _run_cli(tmp_path, zone_config(str(tmp_path / "again"), fail_on_all_rejected=False), messages)
    assert quiet.returncode == 0
    assert "alert.stream_all_rejected" in quiet.stderr.decode()


def test_a_run_where_some_records_of_each_stream_landed_is_not_failed(tmp_path: Path) -> None:
    messages = [
        schema_message("orders", ORDERS_SCHEMA),
        record_message("orders", {"id": "o1", "total": "not a number"}),
        record_message("orders", {"id": "o2", "total": 3}),
    ]
    target, _ = run_target(zone_config(str(tmp_path)), messages)

    assert target.all_rejected_streams == []
    target.raise_if_all_rejected()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"NaN", "NaN at $.record.total is not JSON"),
        (b"Infinity", "Infinity at $.record.total is not JSON"),
        (b"-Infinity", "-Infinity at $.record.total is not JSON"),
        (b"1e999", "1e999 at $.record.total is beyond the range of a JSON number"),
        (b'"\\ud800"', "a lone surrogate (\\u escape) at $.record.total is not valid Unicode"),
    ],
)
def test_values_json_cannot_carry_go_to_the_dlq_as_the_original_line(
    tmp_path: Path, value: bytes, message: str
) -> None:
    config = zone_config(str(tmp_path))
    line = b'{"type":"RECORD","stream":"orders","record":{"id":"o1","total":' + value + b"}}"
    run_target(config, [schema_message("orders", ORDERS_SCHEMA), line, record_message("orders", {"id": "o2"})])

    assert [r["id"] for r in raw_records(config)] == ["o2"]
    [letter] = dead_letters(config)
    assert letter["error_message"].startswith(message)
    assert (letter["record"], letter["record_text"], letter["stream"]) == (None, line.decode(), "orders")


@pytest.mark.parametrize("depth", [253, 300, 1000])
def test_a_record_nested_deeper_than_the_zones_can_store_goes_to_the_dlq_and_the_run_goes_on(
    tmp_path: Path, depth: int
) -> None:
    # orjson reads 1024 levels but writes 254: such a record used to stop the run with "Recursion limit reached".
    config = zone_config(str(tmp_path))
    deep = b'{"a":' * depth + b"1" + b"}" * depth
    line = b'{"type":"RECORD","stream":"orders","record":{"id":"o1","deep":' + deep + b"}}"
    run_target(config, [schema_message("orders", ORDERS_SCHEMA), line, record_message("orders", {"id": "o2"})])

    assert [r["id"] for r in raw_records(config)] == ["o2"]
    [letter] = dead_letters(config)
    assert letter["error_type"] == "parse_error"
    assert "nests deeper than 254 levels" in letter["error_message"]
    assert (letter["record"], letter["record_text"]) == (None, line.decode())


def test_invalid_utf8_goes_to_the_dlq_as_the_original_bytes(tmp_path: Path) -> None:
    import base64

    config = zone_config(str(tmp_path))
    line = b'{"type":"RECORD","stream":"orders","record":{"id":"o\xff1"}}'
    run_target(config, [schema_message("orders", ORDERS_SCHEMA), line])

    [letter] = dead_letters(config)
    assert letter["record"] is None
    assert base64.b64decode(letter["record_base64"]) == line
    assert "not valid UTF-8" in letter["error_message"]
    assert letter["stream"] == "orders"
    assert raw_records(config) == []


def test_integers_beyond_64_bits_land_exactly(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "total": {"type": "integer"}}}
    big = 123456789012345678901234567890
    line = b'{"type":"RECORD","stream":"orders","record":{"id":"o1","total":' + str(big).encode() + b"}}"
    run_target(config, [schema_message("orders", schema), line])

    store = ObjectStore(config["raw_url"])
    [info] = store.list()
    import gzip as _gzip

    text = _gzip.decompress(store.read_bytes(info.key)).decode()
    assert f'"total":{big}' in text
    assert dead_letters(config) == []


def test_a_state_with_an_integer_beyond_64_bits_is_emitted_exactly(tmp_path: Path, capsys: Any) -> None:
    big = 2**70
    line = b'{"type":"STATE","value":{"cursor":' + str(big).encode() + b"}}"
    target = TargetS3Raw(config=zone_config(str(tmp_path)))
    capsys.readouterr()
    target.listen(io.BytesIO(encode([schema_message("orders", ORDERS_SCHEMA), line])))

    assert capsys.readouterr().out.strip() == f'{{"cursor":{big}}}'


def test_whitespace_only_lines_carry_nothing(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    run_target(
        config, [schema_message("orders", ORDERS_SCHEMA), b"     ", b"\t \r", record_message("orders", {"id": "o"})]
    )

    assert dead_letters(config) == []
    assert [r["id"] for r in raw_records(config)] == ["o"]


def test_a_reprocessed_unrepresentable_line_keeps_its_original_text(tmp_path: Path) -> None:
    from plugins.dlq.ops import list_batches
    from plugins.dlq.reprocess import Reprocessor

    config = zone_config(str(tmp_path))
    line = b'{"type":"RECORD","stream":"orders","record":{"id":"o1","total":NaN}}'
    run_target(config, [schema_message("orders", ORDERS_SCHEMA), line])
    dlq = ObjectStore(config["dlq_url"])
    registry = SchemaRegistry(ObjectStore(config["registry_url"]))

    # A map that does not fix the value (the text still says NaN): the entry goes back to the DLQ.
    from plugins.dlq.record_mapping import load_mapping

    map_file = tmp_path / "still_nan.py"
    map_file.write_text("def map_record(record, stream):\n    return {'id': 'o1', 'total': 'NaN'}\n")
    report = Reprocessor(
        dlq, ObjectStore(config["raw_url"]), registry, actor="tester", mapping=load_mapping(map_file)
    ).run([batch.key for batch in list_batches(dlq)])

    assert (report.totals()["passed"], report.totals()["failed"]) == (0, 1)
    assert raw_records(config) == []
    from plugins.core.raw_zone import read_batch

    [letter] = [entry for batch in list_batches(dlq) for entry in read_batch(dlq, batch.key)]
    assert (letter["record"], letter["record_text"], letter["retry_count"]) == (None, line.decode(), 1)


def test_decimals_beyond_a_float64_land_digit_for_digit(tmp_path: Path) -> None:
    config = zone_config(str(tmp_path))
    schema = {"type": "object", "properties": {"id": {"type": "string"}, "n": {"type": "number", "minimum": 0}}}
    lines = [
        b'{"type":"RECORD","stream":"c","record":{"id":"a","n":1.0000000000000000001}}',
        b'{"type":"RECORD","stream":"c","record":{"id":"b","n":12345678.123456789}}',
        b'{"type":"RECORD","stream":"c","record":{"id":"c","n":0.1}}',
    ]
    run_target(config, [schema_message("c", schema), *lines])

    assert dead_letters(config) == []
    raw = b"".join(zlib.decompress(path.read_bytes(), 31) for path in sorted((tmp_path / "raw").rglob("*.ndjson.gz")))
    assert b'"n":1.0000000000000000001' in raw
    assert b'"n":12345678.123456789' in raw
    assert b'"n":0.1' in raw
