"""The built-in ``events`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ErasureKey, RawInput, TransformDescriptor

# The streams each provider's webhook handler feeds (taps/*/webhook.py), drained as ``webhook_<stream>``
# (taps.webhooks.streams.drained_stream_name). Spelled here because a connector never imports another;
# tests/test_transforms_builtins.py keeps them equal to the handlers'.
WEBHOOK_STREAM_PREFIX = "webhook_"
WEBHOOK_STREAMS: dict[str, tuple[str, ...]] = {
    "stripe": ("events",),
    "shopify": (
        "orders",
        "customers",
        "products",
        "refunds",
        "fulfillments",
        "checkouts",
        "draft_orders",
        "collections",
        "inventory_items",
    ),
    "salesforce": ("Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember"),
    # Campaign feedback (taps/campaign_events): mapped to one vocabulary by transform.py's _campaign_feedback.
    "campaign-events": ("campaign_events",),
    "sendgrid": ("email_events",),
}


def webhook_inputs() -> list[RawInput]:
    """Every drained webhook stream, as the keyword argument ``<provider>_webhook_<stream, lower-case>``."""
    return [
        RawInput(
            provider, f"{WEBHOOK_STREAM_PREFIX}{stream}", argument=f"{provider}_{WEBHOOK_STREAM_PREFIX}{stream.lower()}"
        )
        for provider, streams in WEBHOOK_STREAMS.items()
        for stream in streams
    ]


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="events",
            inputs=[RawInput("stripe", "events", argument="stripe_events"), *webhook_inputs()],
            output="events",
            key=["event_id"],
            function="transforms.events.transform:events",
            quality_rules="transforms.events.transform:QUALITY_RULES",
            merge_order="transforms.events.transform:merge_order",
            partitioning=["month(occurred_at)"],
            description="Stripe events and every webhook event.",
            erasure_keys=[
                ErasureKey("email", id_type="email"),
                ErasureKey("customer_id_value", type_column="customer_id_type"),
            ],
        )
    ]
