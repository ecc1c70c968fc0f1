"""The raw-zone sink: collects a stream's records and writes each full batch as one object."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from singer_sdk.helpers.conform import DatetimeErrorTreatmentEnum
from singer_sdk.sinks import BatchSink

from plugins.events import log_event

if TYPE_CHECKING:
    from singer_sdk.sinks.core import BaseJSONSchemaValidator

    from targets.s3raw.target import TargetS3Raw


class RawZoneSink(BatchSink):
    """Writes one stream's records to the raw zone, ``batch_size`` records per object."""

    @property
    def max_size(self) -> int:
        return int(self.config.get("batch_size", 20_000))

    @property
    def include_sdc_metadata_properties(self) -> bool:
        return True  # Every raw record carries its metadata columns.

    def __init__(
        self, target: TargetS3Raw, stream_name: str, schema: dict[str, Any], key_properties: Sequence[str] | None
    ) -> None:
        # Microseconds since the epoch at start, then +1 per record: unique in a run and ordered across runs.
        self._next_sequence = time.time_ns() // 1000
        self.raw_writer = target.raw_writer
        super().__init__(target, stream_name, schema, key_properties)

    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """No validation yet: records land as sent and ``_cdp_schema_version`` stays null (unvalidated)."""
        return None

    def _add_sdc_metadata_to_record(
        self, record: dict[str, Any], message: dict[str, Any], context: dict[str, Any]
    ) -> None:
        now = datetime.now(UTC).isoformat()
        record["_sdc_extracted_at"] = message.get("time_extracted")
        record["_sdc_received_at"] = now
        record["_sdc_batched_at"] = None  # Set when the batch is written.
        record["_sdc_sequence"] = self._next_sequence
        record["_cdp_schema_version"] = None  # Filled in once records are validated against the registry.
        self._next_sequence += 1

    def _parse_timestamps_in_record(
        self, record: dict[str, Any], schema: dict[str, Any], treatment: DatetimeErrorTreatmentEnum
    ) -> None:
        """Raw records keep their properties exactly as the tap sent them: no timestamp parsing."""

    def process_record(self, record: dict[str, Any], context: dict[str, Any]) -> None:
        context.setdefault("records", []).append(record)

    def process_batch(self, context: dict[str, Any]) -> None:
        records: list[dict[str, Any]] = context.get("records", [])
        if not records:
            return
        batched_at = datetime.now(UTC)
        stamp = batched_at.isoformat()
        for record in records:
            record["_sdc_batched_at"] = stamp
        batch = self.raw_writer.write_batch(self.stream_name, records, when=batched_at)
        log_event(
            self.logger,
            "raw_batch_written",
            stream=self.stream_name,
            records=batch.record_count,
            bytes=batch.size_bytes,
            key=batch.key,
        )
