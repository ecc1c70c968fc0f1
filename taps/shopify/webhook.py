"""Shopify webhooks: ``X-Shopify-Hmac-Sha256`` verification and topic-to-stream mapping.

Shopify signs the raw body with the app's client secret (HMAC-SHA256, base64, in ``X-Shopify-Hmac-Sha256``), names
the topic in ``X-Shopify-Topic`` (``orders/create``) and identifies the delivery in ``X-Shopify-Webhook-Id``, which a
retry repeats, so it is the dedupe key. The body is the resource itself; its stream is the topic's resource
(``orders/create`` feeds ``orders``). See https://shopify.dev/docs/apps/build/webhooks/subscribe/https.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugins.webhook_signing import (
    HmacHeaderScheme,
    SignatureEncoding,
    UnmappableWebhookError,
    WebhookEvent,
    json_object,
)

TOPIC_HEADER = "x-shopify-topic"
WEBHOOK_ID_HEADER = "x-shopify-webhook-id"
HMAC_HEADER = "X-Shopify-Hmac-Sha256"

# The resources whose topics land in the raw zone; other topics (app/uninstalled, shop/update...) go to the DLQ.
SHOPIFY_WEBHOOK_STREAMS = (
    "orders",
    "customers",
    "products",
    "refunds",
    "fulfillments",
    "checkouts",
    "draft_orders",
    "collections",
    "inventory_items",
)


@dataclass(frozen=True)
class ShopifyWebhookHandler:
    """Verifies Shopify's HMAC and maps each delivery to one record of its topic's resource stream."""

    provider: str = "shopify"
    streams: Sequence[str] = SHOPIFY_WEBHOOK_STREAMS
    scheme: HmacHeaderScheme = field(
        default_factory=lambda: HmacHeaderScheme(HMAC_HEADER, encoding=SignatureEncoding.BASE64)
    )

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets)

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        topic = headers.get(TOPIC_HEADER, "")
        webhook_id = headers.get(WEBHOOK_ID_HEADER, "")
        if not webhook_id:
            raise UnmappableWebhookError("no X-Shopify-Webhook-Id header")
        resource = topic.partition("/")[0]
        if resource not in self.streams:
            raise UnmappableWebhookError(f"topic '{topic}' feeds no stream (known: {', '.join(self.streams)})")
        payload = json_object(body)
        return [
            WebhookEvent(stream=resource, event_id=webhook_id, topic=topic, received_at=received_at, payload=payload)
        ]
