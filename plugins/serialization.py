"""JSON as every zone writes it: one compact object per line, decimals as numbers, datetimes as ISO-8601."""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterable
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None  # JSON has no NaN or Infinity.
        # A Fragment is written verbatim: the exact decimal digits as a JSON number, no float rounding.
        return orjson.Fragment(str(value))
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """One value as compact JSON bytes (no trailing newline); integers beyond 64 bits are written exactly."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return _exact_dumps(value)


def _exact_dumps(value: Any) -> bytes:
    """The standard library's encoder, for what orjson refuses: integers beyond 64 bits (rare, so not fast)."""

    def default(item: Any) -> Any:
        if isinstance(item, decimal.Decimal):
            raise TypeError("a Decimal beside an integer beyond 64 bits cannot be written exactly")
        return _default(item)

    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default)
    return text.encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document."""
    return orjson.loads(data)


def ndjson(records: Iterable[Any]) -> bytes:
    """Records as newline-delimited JSON, each line ending in a newline."""
    return b"".join(dumps(r) + b"\n" for r in records)
