"""The built-in ``customer_events`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import TableInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="customer_events",
            # customers: run after identity resolution, and again when it merges profiles (see transform.py).
            inputs=[TableInput("events"), TableInput("customers")],
            output="customer_events",
            key=["event_id"],
            function="transforms.customer_events.transform:customer_events",
            quality_rules="transforms.customer_events.transform:QUALITY_RULES",
            partitioning=["month(occurred_at)"],
            description="Every event of a known customer under the unified customer_id: behaviour for segments.",
            # Computed from events, which the erasure list has already filtered.
        )
    ]
