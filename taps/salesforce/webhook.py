"""Salesforce webhooks: Change Data Capture events pushed by the org (Flow or Apex callout), HMAC-signed.

Salesforce has no built-in signature for HTTP callouts, so the org signs the raw body itself with the shared secret
(``Crypto.generateMac('hmacSHA256', body, secret)``, hex in ``X-Salesforce-Signature``) — the generic HMAC scheme.
The body is a Change Data Capture event as the Pub/Sub and streaming APIs deliver it:
``{"payload": {"ChangeEventHeader": {"entityName", "changeType", "transactionKey", "sequenceNumber", ...}, fields},
"event": {"replayId": ...}}``. The stream is the object (``Account``, as tap-salesforce names it), the topic the
change type, and ``{transactionKey}:{sequenceNumber}`` identifies the change, which a redelivery repeats (the dedupe
key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugins.connectors.webhook_signing import (
    DEFAULT_DLQ_HEADERS,
    HmacHeaderScheme,
    SignatureEncoding,
    UnmappableWebhookError,
    WebhookEvent,
    json_object,
)

SIGNATURE_HEADER = "X-Salesforce-Signature"
SALESFORCE_WEBHOOK_OBJECTS = ("Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember")
# Headers kept with a dead-lettered delivery: an Apex callout sends these, and none of them is a secret.
SALESFORCE_DLQ_HEADERS = (*DEFAULT_DLQ_HEADERS, "sfdc-stack-depth")


@dataclass(frozen=True)
class SalesforceWebhookHandler:
    """Verifies the org's HMAC and maps each change event to one record of its object's stream."""

    provider: str = "salesforce"
    objects: Sequence[str] = SALESFORCE_WEBHOOK_OBJECTS
    scheme: HmacHeaderScheme = field(
        default_factory=lambda: HmacHeaderScheme(SIGNATURE_HEADER, encoding=SignatureEncoding.HEX)
    )
    dlq_headers: Sequence[str] = SALESFORCE_DLQ_HEADERS

    @property
    def streams(self) -> Sequence[str]:
        return tuple(self.objects)  # Named like tap-salesforce's streams: the sObject name.

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets)

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        document = json_object(body)
        payload = document.get("payload")
        header = payload.get("ChangeEventHeader") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or not isinstance(header, dict):
            raise UnmappableWebhookError("body is not a change event (no payload.ChangeEventHeader)")
        entity = header.get("entityName")
        if entity not in self.objects:
            raise UnmappableWebhookError(f"entity '{entity}' feeds no stream (known: {', '.join(self.objects)})")
        transaction = header.get("transactionKey")
        sequence = header.get("sequenceNumber")
        if not transaction or sequence is None:
            raise UnmappableWebhookError("ChangeEventHeader has no transactionKey/sequenceNumber")
        return [
            WebhookEvent(
                stream=str(entity),
                event_id=f"{transaction}:{sequence}",
                topic=str(header.get("changeType", "")),
                received_at=received_at,
                payload=document,
                payload_json=body,
            )
        ]
