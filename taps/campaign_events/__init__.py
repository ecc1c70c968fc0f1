"""Campaign feedback webhooks: the generic signed campaign-event format and SendGrid's Event Webhook.

Webhook-only sources: their events reach the raw zone through the receiver and ``tap-webhooks`` (the ``tap`` named
here), and the ``events`` transform maps both to one vocabulary (docs/activation.md#feedback-loop).
"""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import SourceDescriptor


@hookimpl
def cdp_sources() -> list[SourceDescriptor]:
    return [
        SourceDescriptor(
            name="campaign-events",
            tap="taps.webhooks.tap:TapWebhooks",
            streams=["campaign_events"],
            description="Campaign feedback (delivered, opened, clicked, bounced, ...) in the generic signed format.",
            webhook_handler="taps.campaign_events.webhook:CampaignEventsWebhookHandler",
        ),
        SourceDescriptor(
            name="sendgrid",
            tap="taps.webhooks.tap:TapWebhooks",
            streams=["email_events"],
            description="SendGrid's Event Webhook (ECDSA-signed), mapped to the campaign feedback events.",
            webhook_handler="taps.campaign_events.webhook:SendGridWebhookHandler",
        ),
    ]
