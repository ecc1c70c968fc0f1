"""What reprocess may land: parse errors and values JSON cannot hold only through a --map; keys checked like the target.

The dead letters come from a real target-s3raw run where the target can produce them; entries in the shape the
target writes for records it cannot represent exactly (``record: null`` with ``record_text`` or ``record_base64``)
are written as the target writes them.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from plugins.core.layout import dlq_batch_key
from plugins.core.raw_zone import gzip_bytes
from plugins.core.serialization import ndjson
from plugins.dlq.ops import list_batches, read_entries
from plugins.dlq.record_mapping import load_mapping
from plugins.dlq.reprocess import Reprocessor
from schema_registry import SchemaRegistry
from tests.dlq_helpers import Zones, all_rows
from tests.s3raw_support import record_message, run_target, schema_message, zone_config

# Open like most Singer schemas: no 'required', additional properties allowed. A whole Singer message validates.
OPEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "amount": {"type": ["number", "null"]}},
}


def _reprocess(zones: Zones, mapping: Path | None = None) -> list[dict[str, Any]]:
    reprocessor = Reprocessor(
        zones.dlq,
        zones.raw,
        SchemaRegistry(zones.registry),
        actor="tester",
        mapping=load_mapping(mapping) if mapping else None,
    )
    report = reprocessor.run([b.key for b in list_batches(zones.dlq, count_records=False)])
    return [o.as_dict() for o in report.outcomes]


def _map(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fix.py"
    path.write_text(body)
    return path


def _target_run(base: str, lines: list[Any]) -> Zones:
    run_target(zone_config(base), [schema_message("customers", OPEN_SCHEMA, ["id"]), *lines])
    return Zones.under(base)


def test_parse_errors_are_skipped_without_a_map_and_never_land_as_rows(tmp_path: Path) -> None:
    zones = _target_run(
        str(tmp_path / "zone"), [b'{"type": "RECORD", "stream": "customers", "rec": {"id": "c1", "amount": 1}}']
    )
    (before,) = list_batches(zones.dlq)
    assert before.error_type == "parse_error"

    outcomes = _reprocess(zones)

    assert [o["status"] for o in outcomes] == ["skipped"]
    assert "1 parse errors" in outcomes[0]["message"]
    assert "--map" in outcomes[0]["message"]
    assert all_rows(zones.raw) == []
    assert [b.key for b in list_batches(zones.dlq)] == [before.key]  # left exactly as it was


def test_a_map_turns_parse_errors_into_records_and_keyless_ones_go_back_with_a_reason(tmp_path: Path) -> None:
    zones = _target_run(
        str(tmp_path / "zone"),
        [
            b'{"type": "RECORD", "stream": "customers", "rec": {"id": "c1", "amount": 1}}',
            b'{"type": "RECORD", "stream": "customers", "rec": {"amount": 2}}',
            record_message("customers", {"id": "ok"}),
        ],
    )
    mapping = _map(tmp_path, "def map_record(record, stream):\n    return record['rec']\n")

    (outcome,) = _reprocess(zones, mapping)

    assert (outcome["status"], outcome["passed"], outcome["failed"]) == ("reprocessed", 1, 1)
    assert [(r["id"], r["amount"]) for r in all_rows(zones.raw) if "_cdp_reprocessed_from" in r] == [("c1", 1)]
    (back,) = [e for b in list_batches(zones.dlq) for e in read_entries(zones.dlq, b.key)]
    assert back["errors"][0]["message"].startswith("the record has no key properties ['id']")
    assert back["record"] == {"type": "RECORD", "stream": "customers", "rec": {"amount": 2}}  # unchanged


def test_a_nan_line_is_not_landed_without_a_map(tmp_path: Path) -> None:
    nan_line = b'{"type": "RECORD", "stream": "customers", "record": {"id": "c1", "amount": NaN}}'
    zones = _target_run(str(tmp_path / "zone"), [nan_line])
    (letter,) = [e for b in list_batches(zones.dlq) for e in read_entries(zones.dlq, b.key)]
    assert (letter["record"], letter["record_text"]) == (None, nan_line.decode())  # the line as the source sent it

    outcomes = _reprocess(zones)

    assert [o["status"] for o in outcomes] == ["skipped"]
    assert "need a --map" in outcomes[0]["message"]
    assert not any("_cdp_reprocessed_from" in r for r in all_rows(zones.raw))


def test_a_nan_stored_as_null_by_an_older_target_is_not_landed_without_a_map(tmp_path: Path) -> None:
    zones = _target_run(str(tmp_path / "zone"), [])
    older = {
        **_unrepresentable(),
        "error_message": '$.amount: null is not of types "null", "number"',
        "errors": [{"path": "$.amount", "message": 'null is not of types "null", "number"'}],
        "record": {"id": "c1", "amount": None},  # what the old target wrote for {"amount": NaN}
    }
    _write_entries(zones, [older])

    outcomes = _reprocess(zones)

    assert [o["status"] for o in outcomes] == ["skipped"]
    assert "cannot represent exactly" in outcomes[0]["message"]
    assert not any("_cdp_reprocessed_from" in r for r in all_rows(zones.raw))


def _write_entries(zones: Zones, entries: list[dict[str, Any]]) -> str:
    key = dlq_batch_key("acme", "stripe", "schema_validation", "customers")
    zones.dlq.write_bytes(key, gzip_bytes(ndjson(entries)))
    return key


def _unrepresentable(**original: str) -> dict[str, Any]:
    """A dead letter as the target writes it for a record it cannot represent exactly."""
    return {
        "error_type": "schema_validation",
        "error_message": "NaN at $.amount is not JSON; the original line is kept",
        "errors": [{"path": "$.amount", "message": "NaN is not JSON"}],
        "tenant": "acme",
        "provider": "stripe",
        "stream": "customers",
        "schema_version": 1,
        "failed_at": "2026-01-01T00:00:00+00:00",
        "retry_count": 0,
        "run_id": "run_x",
        "context": {"key_properties": ["id"]},
        "record": None,
        **original,
    }


@pytest.mark.parametrize(
    ("original", "received"),
    [
        ({"record_text": '{"id":"c1","amount":NaN}'}, '{"id":"c1","amount":NaN}'),
        ({"record_base64": base64.b64encode(b'{"id":"c\xff","amount":1}').decode()}, b'{"id":"c\xff","amount":1}'),
    ],
)
def test_a_map_receives_the_original_text_of_a_record_json_cannot_hold(
    store_url: str, tmp_path: Path, original: dict[str, str], received: str | bytes
) -> None:
    zones = Zones.under(store_url)
    SchemaRegistry(zones.registry).register("acme/stripe/customers", OPEN_SCHEMA)
    source = _write_entries(zones, [_unrepresentable(**original)])

    assert [o["status"] for o in _reprocess(zones)] == ["skipped"]
    assert all_rows(zones.raw) == []

    seen = tmp_path / "seen"
    mapping = _map(
        tmp_path,
        "import pathlib\n"
        "def map_record(record, stream):\n"
        f"    pathlib.Path({str(seen)!r}).write_bytes(record if isinstance(record, bytes) else record.encode())\n"
        "    return {'id': 'c1', 'amount': None}\n",
    )
    (outcome,) = _reprocess(zones, mapping)

    assert outcome["status"] == "reprocessed"
    expected = received if isinstance(received, bytes) else received.encode()
    assert seen.read_bytes() == expected
    assert not zones.dlq.exists(source)


def test_an_unrepresentable_record_that_still_fails_keeps_its_original_text(store_url: str, tmp_path: Path) -> None:
    zones = Zones.under(store_url)
    SchemaRegistry(zones.registry).register("acme/stripe/customers", OPEN_SCHEMA)
    _write_entries(zones, [_unrepresentable(record_text='{"id":"c1","amount":NaN}')])
    mapping = _map(tmp_path, "def map_record(record, stream):\n    return {'id': 1}\n")  # still wrong

    (outcome,) = _reprocess(zones, mapping)

    assert (outcome["status"], outcome["failed"]) == ("reprocessed", 1)
    (back,) = [e for b in list_batches(zones.dlq) for e in read_entries(zones.dlq, b.key)]
    assert back["record"] is None
    assert back["record_text"] == '{"id":"c1","amount":NaN}'
    assert back["retry_count"] == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("NaN at $.amount is not JSON", True),
        ("-Infinity at $.amount is not JSON", True),
        ("1e999 at $.amount is not representable as a 64-bit float", True),
        ('null is not of types "null", "number"', True),  # what older targets wrote for a NaN
        ('"NaN" is not of type "number"', False),  # the string "NaN" is what the source sent
        ('null is not of type "string"', False),  # a real null the schema does not allow
    ],
)
def test_entries_whose_error_says_a_value_was_not_representable_are_recognised(message: str, expected: bool) -> None:
    from plugins.dlq.reprocess import unrepresentable

    entry = {"record": {"id": "c1", "amount": None}, "error_message": message, "errors": []}
    assert unrepresentable(entry) is expected
