"""Reads Singer messages fast (orjson) and hands lines that are not Singer messages to the DLQ instead of crashing."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from singer_sdk.io_base import GenericSingerReader

from plugins.core.serialization import MAX_RECORD_DEPTH, NotRepresentableError, parse_json

# Called with (the line as read, why it is not a Singer message, its 1-based line number).
UnparseableLineHandler = Callable[[str | bytes, str, int], None]

MESSAGE_TYPES = frozenset({"RECORD", "SCHEMA", "STATE", "BATCH", "ACTIVATE_VERSION"})


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
        parsed = parse_json(line, max_depth=MAX_RECORD_DEPTH + 1)  # A RECORD message wraps its record in one level.
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
