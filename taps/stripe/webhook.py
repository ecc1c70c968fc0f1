"""Stripe webhooks: ``Stripe-Signature`` verification and event mapping (every event feeds the ``events`` stream).

Stripe signs ``"{t}.{raw body}"`` with the endpoint's signing secret (``whsec_...``) and sends
``Stripe-Signature: t=...,v1=...``; the body is an Event object whose ``id`` (``evt_...``) is unique per event and is
what retries repeat, so it is the dedupe key. See https://docs.stripe.com/webhooks#verify-events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugins.webhook_signing import (
    StripeSignatureScheme,
    UnmappableWebhookError,
    WebhookEvent,
    json_object,
)

EVENTS_STREAM = "events"


@dataclass(frozen=True)
class StripeWebhookHandler:
    """Verifies Stripe's signature and maps each Event object to one record of ``events``."""

    provider: str = "stripe"
    streams: Sequence[str] = (EVENTS_STREAM,)
    scheme: StripeSignatureScheme = field(default_factory=StripeSignatureScheme)

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets, now)

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        event = json_object(body)
        event_id = event.get("id")
        event_type = event.get("type")
        if not isinstance(event_id, str) or not event_id:
            raise UnmappableWebhookError("Stripe event has no 'id'")
        if event.get("object", "event") != "event":
            raise UnmappableWebhookError(f"Stripe body is a '{event.get('object')}', not an event")
        if not isinstance(event_type, str) or not event_type:
            raise UnmappableWebhookError(f"Stripe event {event_id} has no 'type'")
        return [
            WebhookEvent(
                stream=EVENTS_STREAM, event_id=event_id, topic=event_type, received_at=received_at, payload=event
            )
        ]
