"""The built-in ``customer_records`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ErasureKey, RawInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="customer_records",
            inputs=[
                RawInput("stripe", "customers", argument="stripe_customers"),
                RawInput("shopify", "customers", argument="shopify_customers"),
                RawInput("salesforce", "Contact", argument="salesforce_contact"),
                RawInput("salesforce", "Lead", argument="salesforce_lead"),
            ],
            output="customer_records",
            key=["record_id"],
            function="transforms.customer_records.transform:customer_records",
            quality_rules="transforms.customer_records.transform:QUALITY_RULES",
            description="One row per person-record: Stripe and Shopify customers, Salesforce Contacts and Leads.",
            erasure_keys=[
                ErasureKey("email", id_type="email"),
                ErasureKey("phone", id_type="phone"),
                ErasureKey("provider_id", type_column="provider_id_type"),
            ],
        )
    ]
