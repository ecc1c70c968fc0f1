"""The built-in ``products`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import RawInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="products",
            inputs=[
                RawInput("shopify", "products", argument="shopify_products"),
                RawInput("stripe", "products", argument="stripe_products"),
                RawInput("stripe", "prices", argument="stripe_prices"),
            ],
            output="products",
            key=["product_id"],
            function="transforms.products.transform:products",
            quality_rules="transforms.products.transform:QUALITY_RULES",
            description="Shopify products, Stripe products and prices.",
            # Products identify no person: nothing for an erasure to match.
        )
    ]
