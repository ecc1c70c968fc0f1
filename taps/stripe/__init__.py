"""tap-stripe: Stripe customers (and, as the taps grow, its other objects) through Stripe's list API."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor
from taps.stripe.sandbox import create_sandbox
from taps.stripe.streams import STREAM_TYPES
from taps.stripe.tap import TapStripe
from taps.stripe.webhook import StripeWebhookHandler


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="stripe",
            tap_class=TapStripe,
            streams=[stream.name for stream in STREAM_TYPES],  # type: ignore[misc]  # SDK types name per instance
            description="Stripe payments: nine list endpoints in created windows, updates through events.",
            sandbox=create_sandbox,
            sandbox_port=12111,
            webhook_handler=StripeWebhookHandler(),
        )
    ]
