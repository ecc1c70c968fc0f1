"""One JSON Schema dialect (2020-12) end to end, Draft 4 schemas of singer-io taps, and no $ref fetched or read."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.core.schema_dialect import DIALECT, DRAFT4, source_dialect, to_dialect
from plugins.core.storage import ObjectStore
from plugins.core.validation import InvalidRecordSchemaError, RecordValidator
from plugins.dlq.ops import list_batches
from plugins.dlq.reprocess import Reprocessor
from schema_registry import CompatibilityMode, InvalidSchemaError, SchemaRegistry, subject_name
from targets.s3raw.target import ProtocolError
from tests.s3raw_support import dead_letters, raw_records, record_message, run_target, schema_message, zone_config

SUBJECT = subject_name("acme", "stripe", "orders")

# Valid under both drafts, judged differently: Draft 7 ignores keywords beside $ref and does not know prefixItems.
TWO_DIALECTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "code": {"$ref": "#/$defs/text", "maxLength": 3},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}]},
    },
    "$defs": {"text": {"type": "string"}},
}
LONG_CODE = {"id": "o1", "code": "abcdef"}
WRONG_PAIR = {"id": "o2", "pair": ["x"]}

# What singer-io's tap-postgres emits (its schema_for_column and expected test schemas): no $schema, Draft 4's
# boolean exclusive bounds on numeric(12,4) columns, recursive array definitions, hstore as an open object.
_RECURSIVE = {
    f"sdc_recursive_{kind}_array": {
        "type": ["null", kind, "array"],
        "items": {"$ref": f"#/definitions/sdc_recursive_{kind}_array"},
    }
    for kind in ("integer", "number", "string", "boolean")
}
SINGER_IO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": ["integer"], "minimum": -2147483648, "maximum": 2147483647},
        "ratio": {
            "type": ["null", "number"],
            "exclusiveMaximum": True,
            "maximum": 100000000,
            "exclusiveMinimum": True,
            "minimum": -100000000,
            "multipleOf": 0.0001,
        },
        "name": {"type": ["null", "string"], "maxLength": 255},
        "updated_at": {"type": ["null", "string"], "format": "date-time"},
        "int_array": {"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_integer_array"}},
        "an_hstore": {"type": ["null", "object"], "properties": {}},
    },
    "definitions": {
        **_RECURSIVE,
        "sdc_recursive_decimal_12_4_array": {
            "type": ["null", "number", "array"],
            "exclusiveMaximum": True,
            "maximum": 100000000,
            "multipleOf": 0.0001,
            "items": {"$ref": "#/definitions/sdc_recursive_decimal_12_4_array"},
        },
    },
}


def test_a_schema_judged_differently_by_draft_7_and_2020_12_is_judged_the_same_on_every_path(
    store_url: str,
) -> None:
    config = zone_config(store_url)
    good = {"id": "o3", "code": "abc", "pair": [1, "anything"]}
    run_target(
        config,
        [
            schema_message("orders", TWO_DIALECTS),
            record_message("orders", LONG_CODE),
            record_message("orders", WRONG_PAIR),
            record_message("orders", good),
        ],
    )

    # The target: 2020-12 verdicts.
    assert [r["id"] for r in raw_records(config)] == ["o3"]
    assert sorted(letter["record"]["id"] for letter in dead_letters(config)) == ["o1", "o2"]
    # The registry: the dialect is stored, in the version and in the schema.
    registry = SchemaRegistry(ObjectStore(config["registry_url"]))
    latest = registry.latest(SUBJECT)
    assert latest is not None
    assert (latest.dialect, latest.schema["$schema"]) == (DIALECT, DIALECT)
    # Validation of the stored version (what reprocess compiles): the same verdicts.
    validator = RecordValidator.for_schema(latest.schema)
    assert [validator.is_valid(r) for r in (LONG_CODE, WRONG_PAIR, good)] == [False, False, True]
    # Reprocess: both dead letters still fail against the registered version.
    dlq = ObjectStore(config["dlq_url"])
    reprocessor = Reprocessor(dlq, ObjectStore(config["raw_url"]), registry, actor="tester")
    report = reprocessor.run([batch.key for batch in list_batches(dlq)], dry_run=True)
    assert (report.totals()["passed"], report.totals()["failed"]) == (0, 2)
    # Compatibility: dropping the $ref's sibling widens (compatible), a longer limit too; a shorter one narrows.
    assert registry.check(SUBJECT, _with_code({"$ref": "#/$defs/text", "maxLength": 5})).compatible
    narrowed = registry.check(SUBJECT, _with_code({"$ref": "#/$defs/text", "maxLength": 2}))
    assert not narrowed.compatible
    assert [v.path for v in narrowed.violations] == ["$.code"]


def _with_code(code: dict[str, Any]) -> dict[str, Any]:
    return {**TWO_DIALECTS, "properties": {**TWO_DIALECTS["properties"], "code": code}}


def test_an_explicit_draft_7_schema_keeps_its_own_meaning_everywhere(tmp_path: Path) -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"id": {"type": "string"}, "code": {"$ref": "#/definitions/text", "maxLength": 3}},
        "definitions": {"text": {"type": "string"}},
    }
    config = zone_config(str(tmp_path))
    run_target(config, [schema_message("orders", draft7), record_message("orders", LONG_CODE)])

    assert [r["id"] for r in raw_records(config)] == ["o1"]  # Draft 7 ignores maxLength beside $ref
    latest = SchemaRegistry(ObjectStore(config["registry_url"])).latest(SUBJECT)
    assert latest is not None
    assert latest.schema["$schema"] == DIALECT
    assert latest.schema["properties"]["code"] == {"$ref": "#/definitions/text"}
    assert RecordValidator.for_schema(latest.schema).is_valid(LONG_CODE)


def test_a_singer_io_draft_4_schema_lands_its_records_and_is_stored_in_2020_12(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert source_dialect(SINGER_IO_SCHEMA) == DRAFT4
    config = zone_config(str(tmp_path))
    run_target(
        config,
        [
            schema_message("orders", SINGER_IO_SCHEMA),
            record_message(
                "orders",
                {"id": 1, "ratio": 99.5, "name": "a", "int_array": [1, [2, 3]], "an_hstore": {"k": "v"}},
            ),
            record_message("orders", {"id": 2, "ratio": 100000000}),  # the exclusive bound itself
            record_message("orders", {"id": 3, "int_array": [1, ["x"]]}),
        ],
    )

    assert [r["id"] for r in raw_records(config)] == [1]
    letters = sorted(dead_letters(config), key=lambda letter: letter["record"]["id"])
    assert [letter["record"]["id"] for letter in letters] == [2, 3]
    assert "$.ratio" in letters[0]["error_message"]
    assert "$.int_array[1][0]" in letters[1]["error_message"]
    latest = SchemaRegistry(ObjectStore(config["registry_url"])).latest(SUBJECT)
    assert latest is not None
    ratio = latest.schema["properties"]["ratio"]
    assert latest.schema["$schema"] == DIALECT
    assert (ratio["exclusiveMaximum"], ratio["exclusiveMinimum"]) == (100000000, -100000000)
    assert "maximum" not in ratio
    assert "minimum" not in ratio
    assert latest.schema["definitions"]["sdc_recursive_decimal_12_4_array"]["exclusiveMaximum"] == 100000000
    assert not [r for r in caplog.records if getattr(r, "cdp_event", None) == "alert.schema_drift"]  # hstore is open


def test_an_unknown_dialect_is_a_one_line_protocol_error(tmp_path: Path) -> None:
    schema = {"$schema": "http://json-schema.org/draft-03/schema#", "properties": {}}
    with pytest.raises(ProtocolError, match="not a dialect"):
        run_target(zone_config(str(tmp_path)), [schema_message("orders", schema)])


class _CountingHandler(BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test counts requests, it does not print them."""


@pytest.fixture
def counting_server() -> Any:
    handler: Any = type("Handler", (_CountingHandler,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _with_ref(ref: str, **root: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"id": {"type": "string"}, "code": {"$ref": ref}}, **root}


def test_a_remote_ref_is_never_fetched_anywhere_a_schema_is_compiled(counting_server: Any, tmp_path: Path) -> None:
    base, requests = counting_server
    schemas = [_with_ref(f"{base}/code.json"), _with_ref("code.json", **{"$id": f"{base}/root.json"})]
    registry = SchemaRegistry(ObjectStore(str(tmp_path / "registry")))
    for schema in schemas:
        with pytest.raises(ProtocolError, match="points outside the schema"):
            run_target(zone_config(str(tmp_path)), [schema_message("orders", schema)])
        with pytest.raises(InvalidSchemaError, match="points outside the schema"):
            registry.register(SUBJECT, schema)
        with pytest.raises(InvalidRecordSchemaError, match="points outside the schema"):
            RecordValidator.for_schema(schema)

    assert requests == []
    assert registry.subjects() == []


def test_a_file_ref_is_never_read(tmp_path: Path) -> None:
    fifo = tmp_path / "code.json"
    os.mkfifo(fifo)
    opened = threading.Event()

    def feed() -> None:  # Returns from open() only if someone opens the FIFO to read it.
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as writer:
            opened.set()
            writer.write(b'{"type": "string"}')

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    for ref in (fifo.as_uri(), str(fifo), "code.json"):
        schema = _with_ref(ref, **{"$id": tmp_path.as_uri() + "/root.json"})
        with pytest.raises(ProtocolError, match="points outside the schema"):
            run_target(zone_config(str(tmp_path)), [schema_message("orders", schema)])
        with pytest.raises(InvalidSchemaError, match="points outside the schema"):
            SchemaRegistry(ObjectStore(str(tmp_path / "registry"))).check(SUBJECT, schema)

    assert not opened.is_set()
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # Lets the feeder finish.
    feeder.join(timeout=10)


def test_a_ref_to_nothing_inside_the_schema_is_a_protocol_error(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="cannot be resolved inside the schema"):
        run_target(zone_config(str(tmp_path)), [schema_message("orders", _with_ref("#/$defs/missing"))])


def test_conversion_covers_the_draft_4_to_7_forms() -> None:
    schema: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "id": "urn:example:order",
        "type": "object",
        "properties": {"tags": {"type": "array", "items": [{"type": "string"}], "additionalItems": False}},
        "dependencies": {"card": ["billing"], "vip": {"required": ["tier"]}},
    }
    converted = to_dialect(schema)

    assert orjson.loads(orjson.dumps(converted)) == {
        "$schema": DIALECT,
        "$id": "urn:example:order",
        "type": "object",
        "properties": {"tags": {"type": "array", "prefixItems": [{"type": "string"}], "items": False}},
        "dependentRequired": {"card": ["billing"]},
        "dependentSchemas": {"vip": {"required": ["tier"]}},
    }
    assert schema["$schema"].startswith("http://json-schema.org/draft-04")  # the input is untouched


def test_mode_none_compatibility_also_reads_2020_12(tmp_path: Path) -> None:
    registry = SchemaRegistry(ObjectStore(str(tmp_path)))
    registry.set_mode(SUBJECT, CompatibilityMode.NONE)
    registry.register(SUBJECT, SINGER_IO_SCHEMA)
    assert registry.lookup(SUBJECT, SINGER_IO_SCHEMA) is not None
