"""Reads Singer messages fast (orjson) and hands lines that are not Singer messages to the DLQ instead of crashing."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

import orjson
from singer_sdk.io_base import GenericSingerReader

# Called with (the line as read, why it is not a Singer message, its 1-based line number).
UnparseableLineHandler = Callable[[str | bytes, str, int], None]

MESSAGE_TYPES = frozenset({"RECORD", "SCHEMA", "STATE", "BATCH", "ACTIVATE_VERSION"})


_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")  # orjson reads integers beyond 64 bits as floats: parse those exactly.
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


class NotRepresentableError(ValueError):
    """A line parses, but a value in it cannot be kept exactly (NaN, Infinity, 1e999, invalid UTF-8...)."""


class _NotJson:
    """What the standard library's parser makes of a token JSON does not have (NaN) or a float64 cannot hold."""

    def __init__(self, token: str) -> None:
        self.token = token


def _exact_float(text: str) -> float | _NotJson:
    value = float(text)
    return value if math.isfinite(value) else _NotJson(text)


def parse_json(line: str | bytes) -> Any:
    """One JSON document, every value exactly as sent, or NotRepresentableError (a ValueError) saying what and where.

    orjson first; the standard library for integers beyond 64 bits (kept exact) and to locate what is refused.
    """
    long_digits = (
        _LONG_DIGITS_BYTES.search(line) if isinstance(line, bytes) else _LONG_DIGITS_TEXT.search(line)
    ) is not None
    if not long_digits:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
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
    problem = non_json_value(value)
    if problem is not None:
        raise NotRepresentableError(problem)
    return value


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
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{item} at {path} is not JSON"
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"a lone surrogate (\\u escape) at {path} is not valid Unicode"
    return None


def line_size(line: str | bytes) -> int:
    """The size of a line in UTF-8 bytes, without its line ending."""
    if isinstance(line, bytes):
        size = len(line)
        if line.endswith(b"\n"):
            size -= 2 if line.endswith(b"\r\n") else 1
        return size
    text = line.rstrip("\r\n")
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="replace"))


class RawMessageReader(GenericSingerReader[Any]):
    """singer-sdk's reader loop, but a line that is not JSON or not a Singer message goes to ``on_unparseable``.

    ``line_bytes`` holds the size of the message being handled, so the target can apply its record size limit.
    """

    def __init__(self, on_unparseable: UnparseableLineHandler | None = None) -> None:
        super().__init__()
        self.on_unparseable = on_unparseable
        self.line_bytes = 0
        self.line_number = 0

    @property
    def default_input(self) -> IO[Any]:
        return sys.stdin.buffer  # Bytes: no text decoding pass, orjson parses UTF-8 directly.

    def deserialize_json(self, line: Any) -> dict[Any, Any]:
        parsed = parse_json(line)
        if not isinstance(parsed, dict):
            raise ValueError(f"a Singer message is a JSON object, not {type(parsed).__name__}")
        return parsed

    def process_lines(
        self, file_input: IO[Any] | None, callbacks: dict[str, Callable[[dict[Any, Any]], None]]
    ) -> Counter[str]:
        stats: Counter[str] = Counter()
        source = file_input if file_input is not None else self.default_input
        for number, line in enumerate(source, start=1):
            self.line_number = number
            if not line or line.isspace():
                continue  # Blank lines carry nothing (isspace stops at the first other character: cheap).
            try:
                message = self.deserialize_json(line)
            except NotRepresentableError as exc:
                self._unparseable(line, str(exc), number)
                stats["PARSE_ERROR"] += 1
                continue
            except ValueError as exc:
                self._unparseable(line, f"line is not JSON: {exc}", number)
                stats["PARSE_ERROR"] += 1
                continue
            kind = message.get("type")
            callback = callbacks.get(kind) if isinstance(kind, str) else None
            if callback is None or kind not in MESSAGE_TYPES:
                self._unparseable(line, f"line is not a Singer message (type {kind!r})", number)
                stats["PARSE_ERROR"] += 1
                continue
            self._current_message = line
            self.line_bytes = line_size(line)
            callback(message)
            stats[kind] += 1
        return stats

    def _unparseable(self, line: str | bytes, reason: str, number: int) -> None:
        if self.on_unparseable is None:
            raise ValueError(f"line {number}: {reason}")
        self.on_unparseable(line, reason, number)
