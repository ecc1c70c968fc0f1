"""tap-webhooks: drains the durable webhook log that ``cdp webhooks serve`` (``plugins.webhooks``) writes."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="webhooks",
            tap="taps.webhooks.tap:TapWebhooks",
            streams=[],  # The provider's handler names them (Stripe: events; Shopify: orders, customers, ...).
            description="Pushed provider events from the durable webhook log (cdp webhooks serve).",
        )
    ]
