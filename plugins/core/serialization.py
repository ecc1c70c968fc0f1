"""JSON as every zone writes and reads it: one compact object per line, decimals as numbers, datetimes as ISO-8601.

Values are kept exactly: integers beyond 64 bits are written and read as integers (orjson alone would refuse to
write them and read them as floats), and input JSON cannot carry (NaN, Infinity, 1e999, invalid UTF-8, lone
surrogates) is refused with ``NotRepresentableError`` naming what and where, never turned into ``null`` or U+FFFD.
"""

from __future__ import annotations

import contextlib
import decimal
import json
import math
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


# orjson, which writes every zone, refuses to encode values nested deeper than this (it reads up to 1024 levels).
MAX_WRITABLE_DEPTH = 254
# The deepest record every zone can hold: a dead letter wraps its record in one more level, and it must still be
# writable, so a record is at most one level less (the target refuses deeper ones to the DLQ with their text).
MAX_RECORD_DEPTH = MAX_WRITABLE_DEPTH - 1


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (objects and arrays), counted without recursion (the value may be deep)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def loads(data: bytes | str) -> Any:
    """Parse one JSON document exactly (integers beyond 64 bits stay integers); see ``parse_json``."""
    return parse_json(data)


# orjson reads integers beyond 64 bits as floats, and a float64 keeps at most 15 significant digits of every decimal
# (16 or 17 only sometimes), so a line holding a run of 16 digits (a decimal point among them: 1234567.123456789) is
# parsed by the standard library instead, which keeps such numbers exact. Digits and "." map to "0", everything else
# to " ": one C pass and one substring search, about 1 µs for a 600-byte line (a regular expression takes ten times as
# long). Strings with long digit runs (card-like ids) take the exact path too: slower, never wrong.
_DIGITS_AS_ZERO = bytes(byte if 0x30 <= byte <= 0x39 or byte == 0x2E else 0x20 for byte in range(256)).translate(
    bytes.maketrans(b"123456789.", b"0000000000")
)
_SIXTEEN_DIGITS = b"0" * 16


def _has_long_digit_run(line: str | bytes) -> bool:
    data = line if isinstance(line, bytes) else line.encode("utf-8", errors="surrogatepass")
    return _SIXTEEN_DIGITS in data.translate(_DIGITS_AS_ZERO)


class NotRepresentableError(ValueError):
    """A line parses, but a value in it cannot be kept exactly (NaN, Infinity, 1e999, invalid UTF-8...)."""


class _NotJson:
    """What the standard library's parser makes of a token JSON does not have (NaN) or a float64 cannot hold."""

    def __init__(self, token: str) -> None:
        self.token = token


def _exact_float(text: str) -> float | decimal.Decimal | _NotJson:
    """A float when it holds the number exactly as written, else the exact Decimal (written back digit for digit)."""
    value = float(text)
    if not math.isfinite(value):
        return _NotJson(text)
    exact = decimal.Decimal(text)
    return value if decimal.Decimal(repr(value)) == exact else exact


def parse_json(line: str | bytes, *, max_depth: int | None = None) -> Any:
    """One JSON document, every value exactly as sent, or NotRepresentableError (a ValueError) saying what and where.

    orjson first; the standard library for integers beyond 64 bits (kept exact) and to locate what is refused. With
    ``max_depth``, a document nested deeper is refused too (what will be written again must fit MAX_WRITABLE_DEPTH).
    """
    if not _has_long_digit_run(line):
        # Not JSON to orjson: the standard library below reads it again and says what is wrong, and where.
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(line)
            _check_depth(line, value, max_depth)
            return value
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotRepresentableError(f"the line is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = line
    try:
        value = json.loads(text, parse_constant=_NotJson, parse_float=_exact_float)
    except RecursionError:
        raise NotRepresentableError("the line nests too deeply to be read") from None
    except json.JSONDecodeError as exc:  # Not JSON: the same exception type as orjson's, for every caller.
        raise orjson.JSONDecodeError(exc.msg, exc.doc, exc.pos) from None
    problem = non_json_value(value)
    if problem is not None:
        raise NotRepresentableError(problem)
    _check_depth(line, value, max_depth)
    return value


def _check_depth(line: str | bytes, value: Any, max_depth: int | None) -> None:
    if max_depth is None:
        return
    opened = line.count(b"{") + line.count(b"[") if isinstance(line, bytes) else line.count("{") + line.count("[")
    if opened > max_depth and json_depth(value) > max_depth:  # Counting brackets first: cheap for every usual line.
        raise NotRepresentableError(f"the line nests deeper than {max_depth} levels, more than the zones can store")


def _finite(number: float | decimal.Decimal) -> bool:
    return number.is_finite() if isinstance(number, decimal.Decimal) else math.isfinite(number)


def non_json_value(value: Any) -> str | None:
    """The first value in ``value`` that JSON cannot carry exactly, as "NaN at $.amount is not JSON"; else None."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            stack.extend((sub, f"{path}.{key}") for key, sub in reversed(item.items()))
            stack.extend((key, f"{path} (a key)") for key in item if isinstance(key, str) and not key.isascii())
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{index}]") for index, sub in reversed(list(enumerate(item))))
        elif isinstance(item, _NotJson):
            if item.token in ("NaN", "Infinity", "-Infinity"):
                return f"{item.token} at {path} is not JSON"
            return f"{item.token} at {path} is beyond the range of a JSON number the raw zone keeps (float64)"
        elif isinstance(item, float | decimal.Decimal) and not _finite(item):
            return f"{item} at {path} is not JSON"
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"a lone surrogate (\\u escape) at {path} is not valid Unicode"
    return None


def ndjson(records: Iterable[Any]) -> bytes:
    """Records as newline-delimited JSON, each line ending in a newline."""
    return b"".join(dumps(r) + b"\n" for r in records)
