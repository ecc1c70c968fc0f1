"""Campaign feedback webhooks: the generic campaign-event format (HMAC-SHA256) and SendGrid's Event Webhook (ECDSA).

Generic: ``POST /webhooks/{tenant}/campaign-events``, one JSON event per request,
``{id, type, occurred_at, campaign, variant, customer_id, email, bounce_type?, revenue?, currency?}``, signed like
custom apps: hex HMAC-SHA256 of the raw body in ``X-CDP-Signature``.

SendGrid: ``POST /webhooks/{tenant}/sendgrid``, a JSON array of events (``email, timestamp, event, sg_event_id,
sg_message_id, reason, type, bounce_classification`` and the unique args the email sender set: ``campaign``,
``variant``, ``customer_id``). SendGrid signs ``timestamp + raw body`` with ECDSA P-256 / SHA-256; the signature
(base64 DER) is in ``X-Twilio-Email-Event-Webhook-Signature``, the timestamp in ``-Timestamp``; the "secret" is the
public key SendGrid shows for the webhook (base64 DER SubjectPublicKeyInfo, or PEM).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plugins.connectors.webhook_signing import (
    DEFAULT_DLQ_HEADERS,
    HmacHeaderScheme,
    SignatureEncoding,
    UnmappableWebhookError,
    WebhookEvent,
    WebhookSignatureError,
    json_object,
)
from plugins.core.serialization import dumps, loads

GENERIC_SIGNATURE_HEADER = "X-CDP-Signature"
GENERIC_STREAM = "campaign_events"
SENDGRID_STREAM = "email_events"
SENDGRID_SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
# SendGrid does not document a tolerance; a captured request replayed later than this is refused as stale.
SENDGRID_TOLERANCE_SECONDS = 600
FEEDBACK_TYPES = ("delivered", "opened", "clicked", "bounced", "complained", "unsubscribed", "converted")

_STRING = {"type": ["string", "null"]}
_NUMBER = {"type": ["number", "null"]}
# The payload fields each stream declares to the raw zone (tap-webhooks adds them to its envelope), so the events
# transform can read them.
GENERIC_PROPERTIES: dict[str, Any] = {
    "id": _STRING,
    "type": _STRING,
    "occurred_at": _STRING,
    "campaign": _STRING,
    "variant": _STRING,
    "customer_id": _STRING,
    "email": _STRING,
    "bounce_type": _STRING,
    "revenue": _NUMBER,
    "currency": _STRING,
}
SENDGRID_PROPERTIES: dict[str, Any] = {
    "email": _STRING,
    "timestamp": {"type": ["integer", "null"]},
    "event": _STRING,
    "sg_event_id": _STRING,
    "sg_message_id": _STRING,
    "reason": _STRING,
    "type": _STRING,
    "bounce_classification": _STRING,
    "campaign": _STRING,
    "variant": _STRING,
    "customer_id": _STRING,
}


@dataclass(frozen=True)
class CampaignEventsWebhookHandler:
    """The generic format: one event per request, HMAC-SHA256 (hex) of the raw body in ``X-CDP-Signature``."""

    provider: str = "campaign-events"
    scheme: HmacHeaderScheme = field(
        default_factory=lambda: HmacHeaderScheme(GENERIC_SIGNATURE_HEADER, encoding=SignatureEncoding.HEX)
    )
    dlq_headers: Sequence[str] = DEFAULT_DLQ_HEADERS

    @property
    def streams(self) -> Sequence[str]:
        return (GENERIC_STREAM,)

    @property
    def stream_properties(self) -> Mapping[str, Mapping[str, Any]]:
        return {GENERIC_STREAM: GENERIC_PROPERTIES}

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets)

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        document = json_object(body)
        event_id = document.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise UnmappableWebhookError("campaign event has no 'id'")
        event_type = document.get("type")
        if event_type not in FEEDBACK_TYPES:
            raise UnmappableWebhookError(
                f"campaign event type '{event_type}' is not one of {', '.join(FEEDBACK_TYPES)}"
            )
        for required in ("occurred_at", "campaign"):
            if not isinstance(document.get(required), str) or not document[required]:
                raise UnmappableWebhookError(f"campaign event '{event_id}' has no '{required}'")
        return [
            WebhookEvent(
                stream=GENERIC_STREAM,
                event_id=event_id,
                topic=str(event_type),
                received_at=received_at,
                payload=document,
                payload_json=body,
            )
        ]


def load_public_key(key: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER (as its settings page shows it) or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in key:
            loaded = serialization.load_pem_public_key(key.encode())
        else:
            loaded = serialization.load_der_public_key(base64.b64decode(key, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise WebhookSignatureError(
            "malformed", "the configured SendGrid verification key is not a public key"
        ) from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise WebhookSignatureError("malformed", "the configured SendGrid verification key is not an ECDSA key")
    return loaded


def sendgrid_signature(private_key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    """The signature header SendGrid computes (tests and the demo sign with a generated key)."""
    return base64.b64encode(private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


@dataclass(frozen=True)
class SendGridWebhookHandler:
    """SendGrid's Event Webhook: an array of events per request, ECDSA P-256 signed with its timestamp."""

    provider: str = "sendgrid"
    tolerance_seconds: int = SENDGRID_TOLERANCE_SECONDS
    dlq_headers: Sequence[str] = DEFAULT_DLQ_HEADERS

    @property
    def streams(self) -> Sequence[str]:
        return (SENDGRID_STREAM,)

    @property
    def stream_properties(self) -> Mapping[str, Mapping[str, Any]]:
        return {SENDGRID_STREAM: SENDGRID_PROPERTIES}

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        signature = headers.get(SENDGRID_SIGNATURE_HEADER)
        timestamp = headers.get(SENDGRID_TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise WebhookSignatureError("missing", "no X-Twilio-Email-Event-Webhook-Signature/-Timestamp header")
        try:
            der = base64.b64decode(signature, validate=True)
            signed_at = int(timestamp)
        except (ValueError, binascii.Error) as exc:
            raise WebhookSignatureError(
                "malformed", "SendGrid signature is not base64 or timestamp not an integer"
            ) from exc
        if abs(now - signed_at) > self.tolerance_seconds:
            raise WebhookSignatureError("stale", f"SendGrid timestamp is more than {self.tolerance_seconds} s away")
        matched = False
        for key in secrets:
            try:
                load_public_key(key).verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
                matched = True
            except InvalidSignature:
                continue
        if not matched:
            raise WebhookSignatureError("mismatch", "SendGrid signature does not verify under any configured key")

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        try:
            document = loads(body)
        except ValueError as exc:
            raise UnmappableWebhookError(f"body is not JSON: {exc}") from exc
        if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
            raise UnmappableWebhookError("SendGrid posts a JSON array of event objects")
        events = []
        for item in document:
            event_id = item.get("sg_event_id")
            if not isinstance(event_id, str) or not event_id:
                raise UnmappableWebhookError("SendGrid event has no 'sg_event_id'")
            events.append(
                WebhookEvent(
                    stream=SENDGRID_STREAM,
                    event_id=event_id,
                    topic=str(item.get("event", "")),
                    received_at=received_at,
                    payload=item,
                    payload_json=dumps(item),  # One event of the array: its own JSON text.
                )
            )
        return events
