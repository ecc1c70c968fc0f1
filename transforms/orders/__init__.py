"""The built-in ``orders`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ErasureKey, RawInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="orders",
            inputs=[
                RawInput("shopify", "orders", argument="shopify_orders"),
                RawInput("stripe", "charges", argument="stripe_charges"),
                RawInput("stripe", "invoices", argument="stripe_invoices"),
                RawInput("stripe", "payment_intents", argument="stripe_payment_intents"),
                RawInput("salesforce", "Opportunity", argument="salesforce_opportunity"),
            ],
            output="orders",
            key=["order_id"],
            function="transforms.orders.transform:orders",
            quality_rules="transforms.orders.transform:QUALITY_RULES",
            partitioning=["month(ordered_at)"],
            description="Shopify orders, Stripe charges, invoices and payment intents, Salesforce opportunities.",
            erasure_keys=[
                ErasureKey("email", id_type="email"),
                ErasureKey("customer_id_value", type_column="customer_id_type"),
            ],
        )
    ]
