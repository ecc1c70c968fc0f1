"""Shopify webhooks: ``X-Shopify-Hmac-Sha256`` verification and topic-to-stream mapping.

Shopify signs the raw body with the app's client secret (HMAC-SHA256, base64, in ``X-Shopify-Hmac-Sha256``), names
the topic in ``X-Shopify-Topic`` (``orders/create``), identifies the delivery in ``X-Shopify-Webhook-Id`` and says
when the event fired in ``X-Shopify-Triggered-At``. The body is the resource itself; its stream is the topic's
resource (``orders/create`` feeds ``orders``). See https://shopify.dev/docs/apps/build/webhooks/subscribe/https.

Only the body is covered by the HMAC: the headers can be changed by whoever captured a delivery. So the dedupe key is
a digest of the topic and the body (a replay with new ids is a duplicate; Shopify's own retries repeat the body), a
delivery triggered longer ago than ``max_age_seconds`` is refused as stale, and a body that is not the topic's
resource (its ``admin_graphql_api_id`` names another type) goes to the DLQ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugins.connectors.webhook_signing import (
    HmacHeaderScheme,
    SignatureEncoding,
    UnmappableWebhookError,
    WebhookEvent,
    WebhookSignatureError,
    json_object,
)

TOPIC_HEADER = "x-shopify-topic"
WEBHOOK_ID_HEADER = "x-shopify-webhook-id"
TRIGGERED_AT_HEADER = "x-shopify-triggered-at"
HMAC_HEADER = "X-Shopify-Hmac-Sha256"
# Shopify retries a failed delivery 8 times over 4 hours; an older trigger time is a replay.
DEFAULT_MAX_AGE_SECONDS = 6 * 3600
CLOCK_SKEW_SECONDS = 300
# Headers kept with a dead-lettered delivery (none of them is a secret).
SHOPIFY_DLQ_HEADERS = (
    "content-type",
    "user-agent",
    "x-shopify-topic",
    "x-shopify-webhook-id",
    "x-shopify-event-id",
    "x-shopify-triggered-at",
    "x-shopify-shop-domain",
    "x-shopify-api-version",
)

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
# The GraphQL type each resource's body names in ``admin_graphql_api_id`` (gid://shopify/Order/123). Checkout
# bodies carry no such id; theirs is a ``token``.
_GRAPHQL_TYPES = {
    "orders": "Order",
    "customers": "Customer",
    "products": "Product",
    "refunds": "Refund",
    "fulfillments": "Fulfillment",
    "draft_orders": "DraftOrder",
    "collections": "Collection",
    "inventory_items": "InventoryItem",
}


@dataclass(frozen=True)
class ShopifyWebhookHandler:
    """Verifies Shopify's HMAC and maps each delivery to one record of its topic's resource stream."""

    provider: str = "shopify"
    streams: Sequence[str] = SHOPIFY_WEBHOOK_STREAMS
    scheme: HmacHeaderScheme = field(
        default_factory=lambda: HmacHeaderScheme(HMAC_HEADER, encoding=SignatureEncoding.BASE64)
    )

    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS
    dlq_headers: Sequence[str] = SHOPIFY_DLQ_HEADERS

    def verify(self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: float) -> None:
        self.scheme.verify(headers, body, secrets)
        triggered = headers.get(TRIGGERED_AT_HEADER)
        if not triggered:
            raise WebhookSignatureError("missing", "no X-Shopify-Triggered-At header")
        try:
            triggered_at = datetime.fromisoformat(triggered.strip().replace("Z", "+00:00"))
            age = now - triggered_at.timestamp()
        except (ValueError, OverflowError) as exc:
            raise WebhookSignatureError("malformed", "X-Shopify-Triggered-At is not an ISO-8601 time") from exc
        if triggered_at.tzinfo is None:
            raise WebhookSignatureError("malformed", "X-Shopify-Triggered-At has no time zone")
        if age > self.max_age_seconds:
            raise WebhookSignatureError("stale", f"triggered {int(age)} s ago (limit {self.max_age_seconds} s)")
        if age < -CLOCK_SKEW_SECONDS:
            raise WebhookSignatureError("stale", f"triggered {int(-age)} s in the future")

    def map(self, headers: Mapping[str, str], body: bytes, received_at: datetime) -> list[WebhookEvent]:
        topic = headers.get(TOPIC_HEADER, "")
        webhook_id = headers.get(WEBHOOK_ID_HEADER, "")
        if not webhook_id:
            raise UnmappableWebhookError("no X-Shopify-Webhook-Id header")
        resource = topic.partition("/")[0]
        if resource not in self.streams:
            raise UnmappableWebhookError(f"topic '{topic}' feeds no stream (known: {', '.join(self.streams)})")
        payload = json_object(body)
        graphql_id = payload.get("admin_graphql_api_id")
        if topic.endswith("/delete") and graphql_id is None:
            # Delete payloads carry only the resource's id (Shopify's webhook reference: {"id": 450789469}).
            if not isinstance(payload.get("id"), int) or isinstance(payload.get("id"), bool):
                raise UnmappableWebhookError(f"topic '{topic}' needs a body with the deleted resource's integer 'id'")
        elif resource in _GRAPHQL_TYPES:
            expected = f"gid://shopify/{_GRAPHQL_TYPES[resource]}/"
            if not (isinstance(graphql_id, str) and graphql_id.startswith(expected)):
                raise UnmappableWebhookError(
                    f"topic '{topic}' needs a body whose admin_graphql_api_id starts with {expected}, "
                    f"got {str(graphql_id)[:80]!r}"
                )
        elif graphql_id is not None or "token" not in payload:
            raise UnmappableWebhookError(f"topic '{topic}' needs a checkout body (a 'token', no admin_graphql_api_id)")
        # The resource, not the topic: the topic header is not signed, so a captured body re-sent under orders/x1,
        # orders/x2... must still be one event. (The resource itself is bound to the body by its admin_graphql_api_id.)
        digest = hashlib.sha256(resource.encode() + b"\n" + body).hexdigest()
        return [
            WebhookEvent(
                stream=resource,
                event_id=f"sha256:{digest}",
                topic=topic,
                received_at=received_at,
                payload=payload,
                payload_json=body,
            )
        ]
