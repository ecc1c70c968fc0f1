"""tap-webhooks: the webhook receiver (``cdp webhooks serve``), its durable log, and the tap that drains it."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import CommandGroup, SourceDescriptor
from taps.webhooks import cli
from taps.webhooks.tap import TapWebhooks


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="webhooks",
            tap_class=TapWebhooks,
            streams=[],  # The provider's handler names them (Stripe: events; Shopify: orders, customers, ...).
            description="Pushed provider events from the durable webhook log (cdp webhooks serve).",
        )
    ]


@hookimpl
def cdp_commands() -> list[CommandGroup]:
    return [CommandGroup(name="webhooks", app=cli.app, help="The webhook receiver and its durable log.")]
