"""tap-webhooks streams: one per stream the provider's handler maps events to, read from the durable log."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from singer_sdk import Stream
from singer_sdk.helpers.conform import TypeConformanceLevel

from plugins.webhooks.log import WebhookLog, consumer_name

if TYPE_CHECKING:
    from singer_sdk import Tap

# Each record is the provider's payload as sent plus these columns; the payload's own properties pass through as-is.
EVENT_ID = "_webhook_event_id"
TOPIC = "_webhook_topic"
RECEIVED_AT = "_webhook_received_at"
LOG_POSITION = "_webhook_log_position"
DRAIN_DEDUPE_CAPACITY = 1_000_000
# Drained streams are named apart from the batch taps' (tap-stripe's `events`, tap-shopify's `orders`): same
# provider, so the same raw-zone folder, but their own subjects in the registry, since their records differ in shape.
STREAM_PREFIX = "webhook_"


def drained_stream_name(log_stream: str) -> str:
    """The Singer stream (and registry subject) the events of a log stream land in: ``events`` → ``webhook_events``."""
    return f"{STREAM_PREFIX}{log_stream}"


def event_schema(payload_properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The drained record's schema: the envelope, plus the payload properties the handler declares for the stream
    (``stream_properties``), so the raw zone's readers see them."""
    return {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            **(payload_properties or {}),
            EVENT_ID: {"type": "string", "description": "The provider's event id (the dedupe key)."},
            TOPIC: {"type": "string", "description": "The provider's topic or event type."},
            RECEIVED_AT: {"type": "string", "format": "date-time", "description": "When the receiver stored it."},
            LOG_POSITION: {"type": "string", "description": "Position in the webhook log (the bookmark)."},
        },
        "required": [EVENT_ID, TOPIC, RECEIVED_AT, LOG_POSITION],
    }


class WebhookEventStream(Stream):
    """The events of one log stream of one tenant and provider, after the confirmed bookmark, in log order.

    Named ``webhook_{log stream}`` (see :func:`drained_stream_name`); the log and its consumers keep the handler's
    stream name.
    """

    replication_key = LOG_POSITION
    is_sorted = True
    primary_keys = (EVENT_ID,)
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE  # Raw: the payload lands exactly as the provider sent it.

    def __init__(
        self, tap: Tap, log_stream: str, log: WebhookLog, payload_properties: Mapping[str, Any] | None = None
    ) -> None:
        self.webhook_log = log
        self.log_stream = log_stream
        super().__init__(tap=tap, name=drained_stream_name(log_stream), schema=event_schema(payload_properties))

    def get_records(self, context: Mapping[str, Any] | None) -> Iterable[dict[str, Any]]:
        tenant = self.config["tenant"]
        provider = self.config["provider"]
        after = self.get_starting_replication_key_value(context)
        # A bookmark from a recreated log (or past its end) would skip every new event and be committed as this
        # consumer's position, letting compaction delete them: refuse it, loudly.
        self.webhook_log.check_bookmark(after)
        # The state handed to this run is what the target confirmed last run: everything up to it is durable in the
        # raw zone, so compaction may drop it.
        self.webhook_log.commit(consumer_name(tenant, provider, self.log_stream), after or "")
        seen: dict[str, None] = {}
        for stored in self.webhook_log.read(tenant, provider, self.log_stream, after):
            entry = stored.entry
            if entry.event_id in seen:  # A redelivery the receiver's bounded dedupe window no longer remembered.
                continue
            seen[entry.event_id] = None
            if len(seen) > DRAIN_DEDUPE_CAPACITY:
                del seen[next(iter(seen))]
            record = dict(entry.payload)
            record[EVENT_ID] = entry.event_id
            record[TOPIC] = entry.topic
            record[RECEIVED_AT] = entry.received_at
            record[LOG_POSITION] = stored.position
            yield record
