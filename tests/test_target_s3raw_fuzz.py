"""A bounded fuzz run of target-s3raw's message reader: arbitrary bytes and near-valid Singer lines.

Every input line ends in exactly one place (raw zone, DLQ, or a STATE/SCHEMA consumed), or the run stops with a
clean CdpError (a protocol error). Longer runs (see docs/raw-zone.md):

    export CDP_FUZZ_SECONDS=600 CDP_FUZZ_EXAMPLES=100000
    .venv/bin/python -m pytest tests/test_target_s3raw_fuzz.py -q -p no:cacheprovider
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from singer_sdk.exceptions import MissingKeyPropertiesError, RecordsWithoutSchemaException

from plugins.core.errors import CdpError
from targets.s3raw.target import TargetS3Raw

BUDGET_SECONDS = float(os.environ.get("CDP_FUZZ_SECONDS", "20"))
MAX_EXAMPLES = int(os.environ.get("CDP_FUZZ_EXAMPLES", "1000"))  # whichever ends first: the time or the examples
SCHEMA = {
    "type": "SCHEMA",
    "stream": "orders",
    "schema": {"type": "object", "properties": {"id": {"type": "string"}, "total": {"type": ["number", "null"]}}},
    "key_properties": [],
}
TOKENS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"123456789012345678901234567890",
    b'"\\ud800"',
    b"\xff",
    b"[",
    b"{",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@st.composite
def near_valid_line(draw: st.DrawFn) -> bytes:
    record = draw(st.dictionaries(st.sampled_from(["id", "total", "x"]), json_values, max_size=3))
    line = _json(
        {
            "type": draw(st.sampled_from(["RECORD", "STATE", "BOGUS"])),
            "stream": "orders",
            "record": record,
            "value": record,
        }
    )
    if draw(st.booleans()):  # Splice in a token JSON cannot carry, or cut the line.
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(TOKENS)) + line[at:]
    return line.replace(b"\n", b" ")


lines = st.lists(near_valid_line() | st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")), max_size=12)
_started: dict[str, float] = {}  # The clock starts at the first example, not when the suite imports this module.


def _budget_spent() -> bool:
    return time.monotonic() - _started.setdefault("at", time.monotonic()) > BUDGET_SECONDS


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(body=lines)
def test_the_reader_never_crashes_and_never_loses_a_line(tmp_path_factory: Any, body: list[bytes]) -> None:
    if _budget_spent():
        return  # The time budget is spent: the remaining examples pass trivially.
    base = tmp_path_factory.mktemp("fuzz")
    config = {
        "raw_url": f"{base}/raw",
        "dlq_url": f"{base}/dlq",
        "registry_url": f"{base}/registry",
        "tenant": "acme",
        "provider": "fuzz",
        "fail_on_all_rejected": False,
    }
    target = TargetS3Raw(config=config)
    data = orjson.dumps(SCHEMA) + b"\n" + b"".join(line + b"\n" for line in body)
    try:
        target.listen(io.BytesIO(data))
    except (CdpError, MissingKeyPropertiesError, RecordsWithoutSchemaException):
        return  # A clean protocol error stops the run before any later STATE: nothing is skipped.
    landed = sum(sink.records_written for sink in target.streams.values())
    counted = landed + target.dead_letter_count
    consumed = sum(1 for line in body if _is_state_or_schema(line))
    blank = sum(1 for line in body if not line.strip())
    assert counted + consumed + blank == len(body)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()  # integers beyond 64 bits too


def _is_state_or_schema(line: bytes) -> bool:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(message, dict)
        and message.get("type") in ("STATE", "SCHEMA")
        and isinstance(message.get("value"), dict)
    )
