"""Helpers for the target-s3raw tests: run the target in-process on Singer messages, read what it wrote."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from typing import Any

import orjson
import pytest

from plugins.core.storage import ObjectStore
from targets.s3raw.target import TargetS3Raw

CUSTOMERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "age": {"type": ["integer", "null"]},
        "address": {"type": ["object", "null"], "properties": {"city": {"type": ["string", "null"]}}},
    },
}


def zone_config(base: str, **overrides: Any) -> dict[str, Any]:
    """A complete target config with raw, DLQ and registry under ``base`` (a local folder or s3:// URL)."""
    config: dict[str, Any] = {
        "raw_url": f"{base}/raw",
        "dlq_url": f"{base}/dlq",
        "registry_url": f"{base}/registry",
        "tenant": "acme",
        "provider": "stripe",
    }
    config.update(overrides)
    return config


def schema_message(stream: str, schema: dict[str, Any], key_properties: list[str] | None = None) -> dict[str, Any]:
    return {"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": key_properties or ["id"]}


def record_message(stream: str, record: Any) -> dict[str, Any]:
    return {"type": "RECORD", "stream": stream, "record": record, "time_extracted": "2026-01-02T03:04:05+00:00"}


def state_message(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "STATE", "value": value}


def encode(messages: list[Any]) -> bytes:
    """Messages as Singer input lines; a ``bytes`` item is written as the raw line it is."""
    return b"".join((m if isinstance(m, bytes) else orjson.dumps(m)) + b"\n" for m in messages)


def run_target(
    config: dict[str, Any], messages: list[Any], capsys: pytest.CaptureFixture[str] | None = None
) -> tuple[TargetS3Raw, list[dict[str, Any]]]:
    """Run the target in-process over ``messages``; returns it and the STATE values it emitted (with ``capsys``)."""
    target = TargetS3Raw(config=config)
    if capsys is not None:
        capsys.readouterr()
    target.listen(io.BytesIO(encode(messages)))
    states = []
    if capsys is not None:
        states = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return target, states


def read_objects(url: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
    """Every batch object under ``url``/``prefix``: key -> its NDJSON lines."""
    store = ObjectStore(url)
    out = {}
    for info in store.list(prefix):
        data = zlib.decompress(store.read_bytes(info.key), 31)
        out[info.key] = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    return out


def raw_records(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for lines in read_objects(config["raw_url"]).values() for record in lines]


def dead_letters(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [letter for lines in read_objects(config["dlq_url"]).values() for letter in lines]


def counts_by_stream(records: list[dict[str, Any]], key: str = "stream") -> Counter[str]:
    return Counter(str(r[key]) for r in records)


def raw_by_stream(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Raw records grouped by the stream their batch file names (the layout's sanitised stream name)."""
    from plugins.core.layout import parse_batch_key

    grouped: dict[str, list[dict[str, Any]]] = {}
    for key, lines in read_objects(config["raw_url"]).items():
        grouped.setdefault(parse_batch_key(key).stream, []).extend(lines)
    return grouped
