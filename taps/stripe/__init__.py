"""tap-stripe: Stripe customers, payments, invoices, subscriptions, products and events through Stripe's list API."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="stripe",
            tap="taps.stripe.tap:TapStripe",
            # The tap's streams (tests/test_plugins.py keeps this list equal to the tap's discovered streams).
            streams=[
                "customers",
                "charges",
                "invoices",
                "subscriptions",
                "payment_intents",
                "products",
                "prices",
                "refunds",
                "events",
            ],
            description="Stripe payments: nine list endpoints in created windows, updates through events.",
            sandbox="taps.stripe.sandbox:create_sandbox",
            sandbox_port=12111,
            webhook_handler="taps.stripe.webhook:StripeWebhookHandler",
        )
    ]
