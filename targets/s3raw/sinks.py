"""Per-stream buffers: raw records (already serialised) and dead letters, each flushed as one object per batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue
from plugins.core.raw_zone import RawZoneWriter, WrittenBatch
from plugins.core.validation import RecordValidator
from targets.s3raw.drift import SchemaDecision


@dataclass
class RawBuffer:
    """One stream's records bound for the raw zone, each serialised without its closing brace.

    Writing appends ``,"_sdc_batched_at":"<time>"}`` to every line in one ``join``, so the batch time is exact
    without touching each record again.
    """

    stream: str
    lines: list[bytes] = field(default_factory=list)
    first_position: int | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, line_without_brace: bytes, position: int) -> None:
        if self.first_position is None:
            self.first_position = position
        self.lines.append(line_without_brace)

    def take(self) -> tuple[list[bytes], int | None]:
        lines, first = self.lines, self.first_position
        self.lines, self.first_position = [], None
        return lines, first


def raw_batch_job(writer: RawZoneWriter, stream: str, lines: list[bytes]) -> Callable[[], WrittenBatch]:
    """The write of one raw batch, to run on the background writer."""

    def job() -> WrittenBatch:
        when = datetime.now(UTC)
        closing = b',"_sdc_batched_at":"' + when.isoformat().encode() + b'"}\n'
        payload = closing.join(lines) + closing
        return writer.write_ndjson(stream, payload, len(lines), when=when)

    return job


@dataclass
class DeadLetterBuffer:
    """One stream's dead letters waiting to be written."""

    stream: str
    letters: list[DeadLetter] = field(default_factory=list)
    first_position: int | None = None

    def __len__(self) -> int:
        return len(self.letters)

    def add(self, letter: DeadLetter, position: int) -> None:
        if self.first_position is None:
            self.first_position = position
        self.letters.append(letter)

    def take(self) -> tuple[list[DeadLetter], int | None]:
        letters, first = self.letters, self.first_position
        self.letters, self.first_position = [], None
        return letters, first


def dead_letter_job(dlq: DeadLetterQueue, letters: list[DeadLetter]) -> Callable[[], list[WrittenBatch]]:
    """The write of one stream's dead letters, to run on the background writer."""

    def job() -> list[WrittenBatch]:
        return dlq.write(letters)

    return job


class StreamSink:
    """What the target knows about one stream: its schema, how records are written, and its raw buffer."""

    def __init__(
        self,
        stream: str,
        schema: dict[str, Any],
        key_properties: Sequence[str],
        validator: RecordValidator,
        decision: SchemaDecision,
    ) -> None:
        self.stream = stream
        self.buffer = RawBuffer(stream)
        # Microseconds since the epoch at start, then +1 per record: unique in a run and ordered across runs.
        self.next_sequence = time.time_ns() // 1000
        self.records_written = 0
        self.update(schema, key_properties, validator, decision)

    def update(
        self,
        schema: dict[str, Any],
        key_properties: Sequence[str],
        validator: RecordValidator,
        decision: SchemaDecision,
    ) -> None:
        """A new SCHEMA message: later records are validated and stamped under ``decision``'s version.

        Records already buffered keep the version they were stamped with, so one batch may mix versions.
        """
        self.schema = schema
        self.key_properties = tuple(key_properties)
        self.validator = validator
        self.decision = decision
        self.version = decision.version
