"""Stripe webhooks: ``Stripe-Signature`` verification and event mapping (every event feeds the ``events`` stream).

Stripe signs ``"{t}.{raw body}"`` with the endpoint's signing secret (``whsec_...``) and sends
``Stripe-Signature: t=...,v1=...``; the body is an Event object whose ``id`` (``evt_...``) is unique per event and is
what retries repeat, so it is the dedupe key. See https://docs.stripe.com/webhooks#verify-events.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugins.connectors.webhook_signing import (
    DEFAULT_DLQ_HEADERS,
    UnmappableWebhookError,
    WebhookEvent,
    WebhookSignatureError,
    hmac_sha256,
    json_object,
)

EVENTS_STREAM = "events"
DEFAULT_STRIPE_TOLERANCE_SECONDS = 300
# Stripe sends one t= and one v1= per signing secret (two or three during a rotation) and perhaps a v0=: a header
# with more entries is not Stripe's, and checking each costs an HMAC comparison per secret.
MAX_SIGNATURE_ENTRIES = 16


@dataclass(frozen=True)
class StripeSignatureScheme:
    """Stripe's ``Stripe-Signature`` scheme (https://docs.stripe.com/webhooks#verify-manually).

    ``t=TIMESTAMP,v1=HEX[,v1=HEX...]``: hex HMAC-SHA256 over ``"{t}.{raw body}"``; any ``v1`` may match; the
    timestamp must be within ``tolerance_seconds`` of now (either side).
    """

    tolerance_seconds: int = DEFAULT_STRIPE_TOLERANCE_SECONDS
    header: str = "stripe-signature"
    scheme: str = "v1"
    max_entries: int = MAX_SIGNATURE_ENTRIES

    def parse(self, value: str) -> tuple[int, list[str]]:
        """The timestamp and the ``v1`` signatures of a header; other schemes (``v0``) are ignored."""
        items = value.split(",", self.max_entries)
        if len(items) > self.max_entries:
            raise WebhookSignatureError("malformed", f"{self.header} has more than {self.max_entries} entries")
        timestamp: int | None = None
        signatures: list[str] = []
        for item in items:
            key, sep, part = item.strip().partition("=")
            if not sep:
                continue
            if key == "t":
                try:
                    timestamp = int(part)
                except ValueError as exc:
                    raise WebhookSignatureError("malformed", f"{self.header} timestamp is not a number") from exc
            elif key == self.scheme:
                signatures.append(part)
        if timestamp is None:
            raise WebhookSignatureError("malformed", f"{self.header} has no timestamp (t=)")
        if not signatures:
            raise WebhookSignatureError("malformed", f"{self.header} has no {self.scheme} signature")
        return timestamp, signatures

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> int:
        """Verify and return the signed timestamp."""
        value = headers.get(self.header)
        if not value:
            raise WebhookSignatureError("missing", f"no {self.header} header")
        timestamp, signatures = self.parse(value)
        signed_payload = str(timestamp).encode() + b"." + body
        candidates = [signature.encode() for signature in signatures]
        matched = False
        for secret in secrets:
            expected = hmac_sha256(secret, signed_payload).hex().encode()
            for candidate in candidates:
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise WebhookSignatureError("mismatch", f"no {self.scheme} signature matches the body under any secret")
        age = int(now - timestamp)
        if self.tolerance_seconds > 0 and abs(age) > self.tolerance_seconds:
            when = f"{age} s old" if age > 0 else f"{-age} s in the future"
            raise WebhookSignatureError(
                "stale", f"timestamp is {when} (tolerance {self.tolerance_seconds} s either way)"
            )
        return timestamp

    def sign(self, body: bytes, secret: str, timestamp: int) -> str:
        """The header value Stripe would send (tests and the load generator)."""
        signature = hmac_sha256(secret, str(timestamp).encode() + b"." + body).hex()
        return f"t={timestamp},{self.scheme}={signature}"


@dataclass(frozen=True)
class StripeWebhookHandler:
    """Verifies Stripe's signature and maps each Event object to one record of ``events``."""

    provider: str = "stripe"
    streams: Sequence[str] = (EVENTS_STREAM,)
    scheme: StripeSignatureScheme = field(default_factory=StripeSignatureScheme)
    dlq_headers: Sequence[str] = DEFAULT_DLQ_HEADERS  # Stripe sends nothing else worth keeping but its signature.

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
                stream=EVENTS_STREAM,
                event_id=event_id,
                topic=event_type,
                received_at=received_at,
                payload=event,
                payload_json=body,
            )
        ]
