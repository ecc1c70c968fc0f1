"""The built-in ``customer_metrics`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import TableInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="customer_metrics",
            # customers: run after identity resolution, and again when it merges profiles (see transform.py).
            inputs=[TableInput("orders"), TableInput("events"), TableInput("customers")],
            output="customer_metrics",
            key=["customer_id", "currency"],
            function="transforms.customer_metrics.transform:customer_metrics",
            quality_rules="transforms.customer_metrics.transform:QUALITY_RULES",
            partitioning=["bucket(16, customer_id)"],
            description="Lifetime value, orders, average order value, recency and engagement per customer.",
            # Computed from orders and events, which the erasure list has already filtered.
        )
    ]
