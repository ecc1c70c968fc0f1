"""target-s3raw: lands every record in the raw zone or, with the reason, in the dead letter queue.

The SDK's per-record machinery (sinks, mappers, per-record validation objects) is bypassed: records are parsed with
orjson, validated with a validator compiled once per schema version, serialised once and gzipped on a background
thread. See docs/raw-zone.md for layouts, drift reporting and the delivery guarantee (at-least-once).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from types import FrameType
from typing import IO, Any, ClassVar

from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.exceptions import MissingKeyPropertiesError, RecordsWithoutSchemaException
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities
from singer_sdk.plugin_base import PluginBase

from plugins.core.dead_letters import DeadLetter, DeadLetterQueue, ErrorType, FieldError
from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event
from plugins.core.layout import NAME_PATTERN, sanitize_stream_name, validate_name
from plugins.core.raw_zone import METADATA_COLUMNS, RawZoneWriter
from plugins.core.schema_dialect import reference_validator
from plugins.core.serialization import MAX_RECORD_DEPTH, dumps, parse_json
from plugins.core.storage import ObjectStore
from plugins.core.validation import InvalidRecordSchemaError, RecordValidator
from plugins.descriptors import Severity
from schema_registry import InvalidSchemaError, SchemaRegistry
from targets.s3raw.batch_files import (
    DEFAULT_MAX_BATCH_DECOMPRESSED_BYTES,
    DEFAULT_MAX_BATCH_FILE_BYTES,
    BatchLimits,
    allowed_prefixes,
    read_batch_manifest,
)
from targets.s3raw.checkpoints import BackgroundWriter, StateCheckpoints
from targets.s3raw.drift import AlertDispatcher, SchemaTracker, UndeclaredProperties
from targets.s3raw.reader import RawMessageReader
from targets.s3raw.sinks import DeadLetterBuffer, StreamSink, dead_letter_job, raw_batch_job

DEFAULT_BATCH_SIZE = 20_000
DEFAULT_MAX_BATCH_AGE_SECONDS = 300
DEFAULT_COMPRESSION_LEVEL = 3
DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024
DEFAULT_DLQ_ALERT_THRESHOLD = 1000
UNPARSED_STREAM = "unparsed"  # The DLQ stream name of lines that name no stream.
_METADATA = frozenset(METADATA_COLUMNS)
_CLOCK_RESOLUTION_SECONDS = 0.01


# A raw-zone file is named {stream}_{timestamp}_{unique}.ndjson.gz: 54 more characters, within a file name's 255.
MAX_STREAM_NAME_CHARS = 128


class ProtocolError(CdpError):
    """The tap broke the Singer protocol (e.g. an invalid SCHEMA message): the run stops."""


class AllRecordsRejectedError(CdpError):
    """Every record of at least one stream went to the DLQ in this run (exit 1 after the last STATE)."""


def _original_line(raw: bytes | None) -> tuple[str | None, str | None]:
    """``(record_text, record_base64)`` of a line kept as sent: text when it is valid UTF-8, else base64."""
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(raw).decode("ascii")


def _stream_named(message: Any) -> str:
    """The stream a line that is not a Singer message names, if it names one (even beside unreadable values)."""
    if isinstance(message, bytes):
        try:
            message = json.loads(message.decode("utf-8", errors="surrogateescape"), parse_constant=str)
        except (ValueError, RecursionError):
            return UNPARSED_STREAM
    stream = message.get("stream") if isinstance(message, dict) else None
    if isinstance(stream, str) and stream and stream.isprintable():
        try:
            stream.encode("utf-8")
        except UnicodeEncodeError:
            return UNPARSED_STREAM
        return stream
    return UNPARSED_STREAM


def _config_problem(error: Any) -> str:
    """A config schema error's message without the value (which the caller shows, or hides for secrets)."""
    if error.validator == "pattern":
        return "use lower-case letters, digits, '_' or '-', starting with a letter or digit (e.g. 'acme')"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "above", "exclusiveMaximum": "below"}
        return f"must be {word[error.validator]} {error.validator_value}"
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    return str(error.message)


class TargetS3Raw(Target):
    """Singer target for the raw zone, with schema registry, drift detection and a dead letter queue."""

    name = "target-s3raw"
    message_reader_class = RawMessageReader
    # Records land exactly as the tap sent them: no stream maps or flattening (transforms come after the raw zone).
    capabilities: ClassVar[list[CapabilitiesEnum]] = [PluginCapabilities.ABOUT, PluginCapabilities.BATCH]
    #: When records arrive (their ``_cdp_received_at`` and batch ages); tests put ``staticmethod(FakeClock(...))`` here.
    clock: ClassVar[staticmethod[[], float]] = staticmethod(time.time)

    config_jsonschema = th.PropertiesList(
        th.Property(
            "raw_url",
            th.StringType,
            required=True,
            title="Raw zone URL",
            description="Where batches land: a local folder, a file:// URL or s3://bucket/prefix.",
        ),
        th.Property(
            "dlq_url",
            th.StringType,
            required=True,
            title="Dead letter queue URL",
            description="Where records that cannot land go, with the reason: a local folder or s3://bucket/prefix.",
        ),
        th.Property(
            "registry_url",
            th.StringType,
            required=True,
            title="Schema registry URL",
            description="The schema registry's store: a local folder or s3://bucket/prefix.",
        ),
        th.Property(
            "tenant",
            th.StringType(pattern=NAME_PATTERN),
            required=True,
            title="Tenant",
            description="Tenant name, e.g. 'acme'.",
        ),
        th.Property(
            "provider",
            th.StringType(pattern=NAME_PATTERN),
            required=True,
            title="Provider",
            description="Source name, e.g. 'stripe'.",
        ),
        th.Property(
            "batch_size",
            th.IntegerType(minimum=1),
            default=DEFAULT_BATCH_SIZE,
            title="Batch size",
            description="Records per batch file and stream.",
        ),
        th.Property(
            "max_batch_age_seconds",
            th.NumberType(exclusive_minimum=0),
            default=DEFAULT_MAX_BATCH_AGE_SECONDS,
            title="Maximum batch age",
            description="Write every buffered record once the oldest has waited this long (checked as messages "
            "arrive).",
        ),
        th.Property(
            "compression_level",
            th.IntegerType(minimum=0, maximum=9),
            default=DEFAULT_COMPRESSION_LEVEL,
            title="gzip level",
            description="1 (fastest) to 9 (smallest).",
        ),
        th.Property(
            "max_record_bytes",
            th.IntegerType(minimum=1),
            default=DEFAULT_MAX_RECORD_BYTES,
            title="Record size limit",
            description="A RECORD message larger than this (bytes of its line) goes to the DLQ as record_too_large.",
        ),
        th.Property(
            "dlq_alert_threshold",
            th.IntegerType(minimum=0),
            default=DEFAULT_DLQ_ALERT_THRESHOLD,
            title="DLQ alert threshold",
            description="Raise an alert when one run sends more than this many records to the DLQ (0: never).",
        ),
        th.Property(
            "batch_allowed_prefixes",
            th.ArrayType(th.StringType(min_length=1)),
            title="Allowed BATCH locations",
            description="Folders (absolute paths, file:// or s3:// URLs) BATCH manifest files may be read from; "
            "default: batch_config.storage.root, else singer-sdk's default batch folder.",
        ),
        th.Property(
            "batch_config",
            th.ObjectType(additional_properties=True),
            title="Batch config",
            description="The tap's singer-sdk batch_config; its storage.root is the default allowed BATCH folder.",
        ),
        th.Property(
            "max_batch_file_bytes",
            th.IntegerType(minimum=1),
            default=DEFAULT_MAX_BATCH_FILE_BYTES,
            title="BATCH file size limit",
            description="A BATCH file larger than this (as stored) goes to the DLQ unread.",
        ),
        th.Property(
            "max_batch_decompressed_bytes",
            th.IntegerType(minimum=1),
            default=DEFAULT_MAX_BATCH_DECOMPRESSED_BYTES,
            title="BATCH decompressed size limit",
            description="A BATCH file that decompresses to more than this goes to the DLQ.",
        ),
        th.Property(
            "fail_on_all_rejected",
            th.BooleanType,
            default=True,
            title="Fail when a stream lands nothing",
            description="Exit 1 (after emitting the last STATE) when every record of some stream went to the DLQ.",
        ),
        th.Property(
            "slack_webhook_url",
            th.StringType,
            secret=True,
            title="Slack webhook URL",
            description="A Slack-compatible incoming webhook for alerts (also CDP_SLACK_WEBHOOK_URL).",
        ),
        th.Property(
            "s3_endpoint_url",
            th.StringType,
            title="S3 endpoint URL",
            description="An S3-compatible endpoint (MinIO, moto); default AWS or AWS_ENDPOINT_URL.",
        ),
    ).to_dict()

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict[str, Any]) -> None:
        """No SDK sink settings (``add_record_metadata``, ``load_method``, ``batch_size_rows``...): none apply here."""

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Check the config against ``config_jsonschema``; the first problem is a one-line ``ConfigError``."""
        validator = reference_validator(self.config_jsonschema)
        errors = sorted(validator.iter_errors(dict(self._config)), key=lambda e: (list(e.path), e.message))
        if not errors:
            return []
        if not raise_errors:
            return [error.message for error in errors]
        error = errors[0]
        if error.validator == "required":
            missing = str(error.message).split("'")[1] if "'" in error.message else "?"
            raise ConfigError(missing, "is required; see docs/raw-zone.md#settings")
        setting = str(error.path[0]) if error.path else "config"
        value = error.instance
        shown = "(secret)" if self.config_jsonschema["properties"].get(setting, {}).get("secret") else repr(value)
        raise ConfigError(setting, f"{shown} is not allowed: {_config_problem(error)}")

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: Any = None,
        file_input: IO[str] | None = None,
    ) -> None:
        """The CLI (singer-sdk's ``Target.invoke``), with two differences.

        A configuration, storage or protocol error ends the run with one line on stderr and exit 1, not a
        traceback. When every record of some stream went to the DLQ, the run exits 1 after its last STATE (unless
        ``fail_on_all_rejected`` is false): see docs/raw-zone.md.
        """
        try:
            PluginBase.invoke.__func__(cls, about=about, about_format=about_format)  # type: ignore[attr-defined]
            cls.print_version(print_fn=cls.logger.info)
            target = cls(
                config=config.config if config else {},
                validate_config=True,
                parse_env_config=config.parse_env if config else False,
            )
            target.listen(file_input)
            target.raise_if_all_rejected()
        except (CdpError, MissingKeyPropertiesError, RecordsWithoutSchemaException) as exc:
            message = " ".join(str(exc).split())
            sys.stderr.write(f"target-s3raw: error: {message}\n")
            sys.stderr.flush()
            sys.exit(1)

    def raise_if_all_rejected(self) -> None:
        """After the run: AllRecordsRejectedError if a stream landed nothing and ``fail_on_all_rejected`` is on."""
        if self.all_rejected_streams and self.fail_on_all_rejected:
            streams = ", ".join(sorted(self.all_rejected_streams))
            raise AllRecordsRejectedError(
                f"every record of stream(s) {streams} went to the DLQ (run {self.dlq.run_id}); the last STATE was "
                "emitted. Inspect with 'cdp dlq list', fix, then 'cdp dlq reprocess' (fail_on_all_rejected: false "
                "keeps exit 0)"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        # Ranges and patterns are checked against config_jsonschema (see _validate_config); defaults fill the rest.
        self.batch_size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.max_batch_age_seconds = float(config.get("max_batch_age_seconds") or DEFAULT_MAX_BATCH_AGE_SECONDS)
        self.max_record_bytes = int(config.get("max_record_bytes") or DEFAULT_MAX_RECORD_BYTES)
        threshold = config.get("dlq_alert_threshold")
        self.dlq_alert_threshold = DEFAULT_DLQ_ALERT_THRESHOLD if threshold is None else int(threshold)
        level = config.get("compression_level")
        level = DEFAULT_COMPRESSION_LEVEL if level is None else int(level)
        self.fail_on_all_rejected = config.get("fail_on_all_rejected", True) is not False
        self.batch_limits = BatchLimits(
            allowed_prefixes=allowed_prefixes(config),
            max_file_bytes=int(config.get("max_batch_file_bytes") or DEFAULT_MAX_BATCH_FILE_BYTES),
            max_decompressed_bytes=int(
                config.get("max_batch_decompressed_bytes") or DEFAULT_MAX_BATCH_DECOMPRESSED_BYTES
            ),
        )
        tenant = validate_name("tenant", config.get("tenant", ""))
        provider = validate_name("provider", config.get("provider", ""))
        endpoint = config.get("s3_endpoint_url")

        def store(setting: str) -> ObjectStore:
            url = config.get(setting)
            if not isinstance(url, str) or not url.strip():
                raise ConfigError(setting, "is required: a local folder, a file:// URL or s3://bucket/prefix")
            return ObjectStore(url, s3_endpoint_url=endpoint, setting=setting)

        self.raw_writer = RawZoneWriter(store("raw_url"), tenant=tenant, provider=provider, compression_level=level)
        self.dlq = DeadLetterQueue(store("dlq_url"), tenant=tenant, provider=provider, compression_level=level)
        self.registry = SchemaRegistry(store("registry_url"))
        extra_sinks = []
        webhook = config.get("slack_webhook_url")
        if webhook:
            from plugins.alerts import SlackWebhookAlertSink

            extra_sinks.append(SlackWebhookAlertSink(webhook))
        self.alerts = AlertDispatcher(tenant, provider, extra_sinks)
        self.schemas = SchemaTracker(self.registry, tenant, provider, self.alerts)
        self.undeclared = UndeclaredProperties(self.alerts)

        self.streams: dict[str, StreamSink] = {}
        self.dead_letters: dict[str, DeadLetterBuffer] = {}
        # Guards the buffers' hand-over to the writer and STATE release, which the writer thread also does.
        self._lock = threading.RLock()
        self.writer = BackgroundWriter(on_done=self._on_batch_written)
        self.checkpoints = StateCheckpoints(self._write_state_message)
        self.position = 0  # The input position of the next buffered item.
        self.dead_letter_count = 0
        self.dead_letters_by_stream: Counter[str] = Counter()
        self.all_rejected_streams: list[str] = []
        self._dlq_alert_raised = False
        self._oldest_buffered_at: float | None = None
        self._clock = 0.0
        self._received_at = ""
        self._finished = False
        if isinstance(self.message_reader, RawMessageReader):
            self.message_reader.on_unparseable = self._process_unparseable_line

    # -- messages -------------------------------------------------------------------------------------------------

    def _check_stream_name(self, stream: str) -> None:
        """A new stream's name must fit in a file name and keep its own raw-zone name and registry subject once
        reduced to ``[a-z0-9_]`` (``public-users`` and ``public_users`` would otherwise share them)."""
        stored_as = sanitize_stream_name(stream)
        if len(stored_as) > MAX_STREAM_NAME_CHARS:
            raise ProtocolError(
                f"stream {stream[:40]!r}...: the name is over {MAX_STREAM_NAME_CHARS} characters; shorten it "
                "(a Meltano stream map can rename it)"
            )
        for other in self.streams:
            if sanitize_stream_name(other) == stored_as:
                raise ProtocolError(
                    f"streams {other!r} and {stream!r} would share the raw-zone name '{stored_as}' (names are reduced "
                    "to [a-z0-9_]); rename one (a Meltano stream map can)"
                )

    def _process_schema_message(self, message_dict: dict[str, Any]) -> None:
        stream = message_dict.get("stream")
        schema = message_dict.get("schema")
        if not isinstance(stream, str) or not stream:
            raise ProtocolError(f"a SCHEMA message needs a non-empty 'stream' name, got {stream!r}")
        if stream not in self.streams:
            self._check_stream_name(stream)
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
            raise ProtocolError(
                f"stream '{stream}': the SCHEMA message's schema must be a JSON Schema object with 'properties'"
            )
        key_properties = message_dict.get("key_properties") or []
        if not isinstance(key_properties, list) or not all(isinstance(k, str) for k in key_properties):
            raise ProtocolError(f"stream '{stream}': key_properties must be a list of property names")
        sink = self.streams.get(stream)
        if sink is not None and sink.schema == schema and list(sink.key_properties) == key_properties:
            return  # Taps repeat SCHEMA messages; an unchanged one changes nothing.
        try:
            validator = RecordValidator.for_schema(schema)
            decision = self.schemas.resolve(stream, schema)
        except (InvalidRecordSchemaError, InvalidSchemaError) as exc:
            raise ProtocolError(f"stream '{stream}': invalid SCHEMA message: {exc}") from exc
        if sink is None:
            self.streams[stream] = StreamSink(stream, schema, key_properties, validator, decision)
        else:
            sink.update(schema, key_properties, validator, decision)
        log_event(
            self.logger,
            "stream_schema",
            stream=stream,
            version=decision.version,
            incompatible=decision.incompatible,
        )

    def _process_record_message(self, message_dict: dict[str, Any]) -> None:
        stream = message_dict.get("stream")
        if not isinstance(stream, str) or "record" not in message_dict:
            self._dead_letter(
                UNPARSED_STREAM if not isinstance(stream, str) else stream,
                ErrorType.PARSE_ERROR,
                "RECORD message without a 'stream' name or a 'record'",
                message_dict,
            )
            return
        sink = self.streams.get(stream)
        if sink is None:
            raise RecordsWithoutSchemaException(
                f"A record for stream '{stream}' was encountered before a corresponding schema. "
                "Check that the tap correctly implements the Singer spec."
            )
        size = self.message_reader.line_bytes if isinstance(self.message_reader, RawMessageReader) else 0
        self.handle_record(sink, message_dict["record"], message_dict.get("time_extracted"), size)

    def handle_record(self, sink: StreamSink, record: Any, time_extracted: Any, size: int) -> None:
        """Route one record: raw zone if it is valid under its stream's schema version, else the DLQ."""
        now = self.clock()
        if now - self._clock >= _CLOCK_RESOLUTION_SECONDS:
            self._clock = now
            self._received_at = datetime.fromtimestamp(now, UTC).isoformat()
            self._check_age(now)
        if isinstance(record, dict):
            for key in sink.key_properties:
                if key not in record:
                    raise MissingKeyPropertiesError(
                        f"Record is missing one or more key_properties. Key Properties: {list(sink.key_properties)}, "
                        f"Record Keys: {list(record)} (stream '{sink.stream}')"
                    )
        if size > self.max_record_bytes:
            self._dead_letter(
                sink.stream,
                ErrorType.RECORD_TOO_LARGE,
                f"record of {size} bytes is over the max_record_bytes limit of {self.max_record_bytes}",
                record,
                version=sink.version,
                context={"record_bytes": size, "max_record_bytes": self.max_record_bytes},
            )
            return
        if not isinstance(record, dict):
            error = FieldError("$", f"a record must be a JSON object, not {type(record).__name__}")
            self._dead_letter(sink.stream, ErrorType.SCHEMA_VALIDATION, error.message, record, [error], sink.version)
            return
        decision = sink.decision
        if decision.incompatible:
            self._dead_letter(
                sink.stream,
                ErrorType.SCHEMA_INCOMPATIBLE,
                f"the stream's schema is incompatible with the registry's latest version {decision.latest_version}",
                record,
                decision.violations,
                version=decision.latest_version,
                context={"latest_version": decision.latest_version},
            )
            return
        validator = sink.validator
        if not validator.is_valid(record):
            errors = validator.errors(record)
            message = "; ".join(f"{e.path}: {e.message}" for e in errors[:3]) or "record does not match its schema"
            self._dead_letter(sink.stream, ErrorType.SCHEMA_VALIDATION, message, record, errors, sink.version)
            return
        undeclared = validator.undeclared(record, _METADATA)
        if undeclared:
            self.undeclared.record(sink.stream, undeclared, sink.version)
        record["_sdc_extracted_at"] = time_extracted
        record["_sdc_received_at"] = self._received_at
        record.pop("_sdc_batched_at", None)  # Written last, when the batch is (see RawBuffer).
        record["_sdc_sequence"] = sink.next_sequence
        record["_cdp_schema_version"] = sink.version
        sink.next_sequence += 1
        if self._oldest_buffered_at is None:
            self._oldest_buffered_at = now
        buffer = sink.buffer
        buffer.add(dumps(record)[:-1], self.position)
        self.position += 1
        if len(buffer) >= self.batch_size:
            self._flush_stream(sink)

    def _process_state_message(self, message_dict: dict[str, Any]) -> None:
        value = message_dict.get("value")
        if not isinstance(value, dict):
            self._dead_letter(
                UNPARSED_STREAM, ErrorType.PARSE_ERROR, "STATE message without a 'value' object", message_dict
            )
            return
        with self._lock:
            self.checkpoints.add(self.position, value)
            self._release_states()

    def _process_batch_message(self, message_dict: dict[str, Any]) -> None:
        stream = message_dict.get("stream")
        encoding = message_dict.get("encoding")
        manifest = message_dict.get("manifest")
        if not isinstance(stream, str) or not isinstance(encoding, dict) or not isinstance(manifest, list):
            self._dead_letter(
                UNPARSED_STREAM if not isinstance(stream, str) else stream,
                ErrorType.PARSE_ERROR,
                "BATCH message without 'stream', 'encoding' or 'manifest'",
                message_dict,
            )
            return
        sink = self.streams.get(stream)
        if sink is None:
            raise RecordsWithoutSchemaException(
                f"A BATCH message for stream '{stream}' was encountered before a corresponding schema."
            )
        endpoint = self.config.get("s3_endpoint_url")
        for url in manifest:
            for item in read_batch_manifest(str(url), encoding, limits=self.batch_limits, s3_endpoint_url=endpoint):
                if item.error is not None:
                    text, encoded = _original_line(item.raw)
                    self._dead_letter(
                        stream,
                        ErrorType.PARSE_ERROR,
                        item.error,
                        None,
                        context={"manifest": url, "line": item.line},
                        record_text=text,
                        record_base64=encoded,
                    )
                else:
                    self.handle_record(sink, item.record, None, item.size)
        log_event(self.logger, "batch_message_read", stream=stream, files=len(manifest))

    def _process_activate_version_message(self, message_dict: dict[str, Any]) -> None:
        log_event(self.logger, "activate_version_ignored", stream=message_dict.get("stream"))

    def _process_unparseable_line(self, line: str | bytes, reason: str, number: int) -> None:
        raw = line if isinstance(line, bytes) else line.encode("utf-8", errors="surrogatepass")
        raw = raw.rstrip(b"\r\n")
        record: Any = None
        try:
            # JSON that is not a Singer message is kept as the JSON it is (if its dead letter can hold it).
            record = parse_json(raw.decode("utf-8"), max_depth=MAX_RECORD_DEPTH)
        except ValueError:
            record = None  # Kept as the original line instead: record_text, else record_base64.
        stream = _stream_named(record if record is not None else raw)
        kept_text, kept_base64 = _original_line(raw) if record is None else (None, None)
        self._dead_letter(
            stream,
            ErrorType.PARSE_ERROR,
            reason[:500],
            record,
            context={"line": number, "bytes": len(raw)},
            record_text=kept_text,
            record_base64=kept_base64,
        )

    # -- the DLQ --------------------------------------------------------------------------------------------------

    def _dead_letter(
        self,
        stream: str,
        error_type: ErrorType,
        message: str,
        record: Any,
        errors: list[FieldError] | None = None,
        version: int | None = None,
        context: dict[str, Any] | None = None,
        record_text: str | None = None,
        record_base64: str | None = None,
    ) -> None:
        context = dict(context or {})
        sink = self.streams.get(stream)
        if sink is not None and sink.key_properties:  # What 'cdp dlq reprocess' checks before landing the record.
            context.setdefault("key_properties", list(sink.key_properties))
        letter = DeadLetter(
            error_type=error_type,
            error_message=message,
            stream=stream,
            record=record,
            errors=list(errors or []),
            schema_version=version,
            context=context,
            record_text=record_text,
            record_base64=record_base64,
        )
        buffer = self.dead_letters.get(stream)
        if buffer is None:
            buffer = self.dead_letters[stream] = DeadLetterBuffer(stream)
        if self._oldest_buffered_at is None:
            self._oldest_buffered_at = time.time()
        buffer.add(letter, self.position)
        self.position += 1
        self.dead_letter_count += 1
        self.dead_letters_by_stream[stream] += 1
        if (
            self.dlq_alert_threshold
            and self.dead_letter_count > self.dlq_alert_threshold
            and not self._dlq_alert_raised
        ):
            self._dlq_alert_raised = True
            self.alerts.raise_(
                "dlq_volume",
                Severity.ERROR,
                f"this run sent more than {self.dlq_alert_threshold} records to the DLQ (dlq_alert_threshold)",
                threshold=self.dlq_alert_threshold,
                run_id=self.dlq.run_id,
            )
        if len(buffer) >= self.batch_size:
            self._flush_dead_letters(buffer)

    # -- flushing and state -----------------------------------------------------------------------------------------

    def _flush_stream(self, sink: StreamSink) -> None:
        if not sink.buffer.lines:
            return
        self.writer.wait_for_capacity()  # Outside the lock: the writer thread's callback takes it.
        with self._lock:
            lines, first = sink.buffer.take()
            if not lines or first is None:
                return
            sink.records_written += len(lines)
            self.writer.submit(first, raw_batch_job(self.raw_writer, sink.stream, lines))
            self._release_states()

    def _flush_dead_letters(self, buffer: DeadLetterBuffer) -> None:
        if not buffer.letters:
            return
        self.writer.wait_for_capacity()
        with self._lock:
            letters, first = buffer.take()
            if not letters or first is None:
                return
            self.writer.submit(first, dead_letter_job(self.dlq, letters))
            self._release_states()

    def flush_all(self, *, wait: bool = False) -> None:
        """Hand every buffered record to the writer; with ``wait``, return once all are durable."""
        for sink in list(self.streams.values()):
            self._flush_stream(sink)
        for buffer in list(self.dead_letters.values()):
            self._flush_dead_letters(buffer)
        self._oldest_buffered_at = None
        if wait:
            self.writer.wait_all()
        with self._lock:
            self._release_states()

    def _check_age(self, now: float) -> None:
        if self._oldest_buffered_at is not None and now - self._oldest_buffered_at >= self.max_batch_age_seconds:
            log_event(self.logger, "batch_age_flush", max_batch_age_seconds=self.max_batch_age_seconds)
            self.flush_all()

    def _safe_position(self) -> int:
        """Every input position below this one is durably written."""
        safe = self.position
        for sink in list(self.streams.values()):  # list(): atomic under the GIL, also on the writer thread
            first = sink.buffer.first_position
            if first is not None:
                safe = min(safe, first)
        for buffer in list(self.dead_letters.values()):
            first = buffer.first_position
            if first is not None:
                safe = min(safe, first)
        pending = self.writer.oldest_pending_position()
        return safe if pending is None else min(safe, pending)

    def _release_states(self) -> None:
        self.writer.reap()
        if self.checkpoints:
            self.checkpoints.release(self._safe_position())

    def _on_batch_written(self) -> None:
        """On the writer thread: a batch is durable, so a waiting STATE may be too (even while input is idle)."""
        # A failed write is not reported here: it stays queued and is raised on the main thread at its next step.
        with self._lock, contextlib.suppress(Exception):
            self._release_states()

    def _write_state_message(self, state: dict[str, Any]) -> None:
        sys.stdout.write(dumps(state).decode() + "\n")  # dumps: integers beyond 64 bits stay exact
        sys.stdout.flush()

    def process_endofpipe(self) -> None:
        """End of input: write everything, then emit the last STATE."""
        if self._finished:
            return
        self._finished = True
        try:
            self.flush_all(wait=True)
        finally:
            self.writer.close()
        self.undeclared.log_summary()
        raw_records = {name: sink.records_written for name, sink in sorted(self.streams.items())}
        self.all_rejected_streams = sorted(
            stream
            for stream, count in self.dead_letters_by_stream.items()
            if count and stream != UNPARSED_STREAM and not raw_records.get(stream)
        )
        for stream in self.all_rejected_streams:
            count = self.dead_letters_by_stream[stream]
            message = f"stream '{stream}': all {count} records of this run went to the DLQ, none landed in raw"
            log_event(self.logger, "stream_all_rejected", logging.ERROR, stream=stream, dead_letters=count)
            self.alerts.raise_(
                "stream_all_rejected",
                Severity.ERROR,
                message,
                stream=stream,
                dead_letters=count,
                run_id=self.dlq.run_id,
            )
        log_event(
            self.logger,
            "run_summary",
            logging.ERROR if self.all_rejected_streams else logging.INFO,
            run_id=self.dlq.run_id,
            raw_records=raw_records,
            dead_letters=self.dead_letter_count,
            dead_letters_by_stream=dict(sorted(self.dead_letters_by_stream.items())),
            all_rejected_streams=self.all_rejected_streams,
        )

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: write what is buffered (so its STATE can be emitted), then exit."""
        log_event(self.logger, "termination_signal", logging.WARNING, signal=signal.Signals(signum).name)
        try:
            self.process_endofpipe()
        finally:
            sys.exit(0)


if __name__ == "__main__":
    TargetS3Raw.cli()
