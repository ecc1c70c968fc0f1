"""tap-shopify: customers, orders, products, inventory items and draft orders through Shopify's GraphQL Admin API."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="shopify",
            tap="taps.shopify.tap:TapShopify",
            # The tap's streams (tests/test_plugins.py keeps this list equal to the tap's discovered streams).
            streams=["customers", "orders", "products", "inventory_items", "draft_orders"],
            description="Shopify Admin GraphQL API: cursor pages sorted by UPDATED_AT, cost-budget throttling.",
            sandbox="taps.shopify.sandbox:create_sandbox",
            sandbox_port=12113,
            webhook_handler="taps.shopify.webhook:ShopifyWebhookHandler",
        )
    ]
