"""tap-shopify: customers, orders, products, inventory items and draft orders through Shopify's GraphQL Admin API."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor
from taps.shopify.sandbox import create_sandbox
from taps.shopify.streams import STREAM_TYPES
from taps.shopify.tap import TapShopify
from taps.shopify.webhook import ShopifyWebhookHandler


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="shopify",
            tap_class=TapShopify,
            streams=[stream.name for stream in STREAM_TYPES],  # type: ignore[misc]  # SDK types name per instance
            description="Shopify Admin GraphQL API: cursor pages sorted by UPDATED_AT, cost-budget throttling.",
            sandbox=create_sandbox,
            sandbox_port=12113,
            webhook_handler=ShopifyWebhookHandler(),
        )
    ]
