"""The built-in ``customers`` transform (see transform.py and docs/transforms.md)."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import ErasureKey, TableInput, TransformDescriptor


@hookimpl
def cdp_transforms() -> list[TransformDescriptor]:
    return [
        TransformDescriptor(
            name="customers",
            inputs=[TableInput("customer_records"), TableInput("events")],
            output="customers",
            key=["customer_id"],
            function="transforms.customers.transform:customers",
            quality_rules="transforms.customers.transform:QUALITY_RULES",
            partitioning=["bucket(16, customer_id)"],
            description="One unified profile per person across providers, with a stable customer_id.",
            # Records with an erased identifier leave the identity map before profiles are built; these keys
            # catch what is left (a profile whose chosen email or phone was erased).
            erasure_keys=[ErasureKey("email", id_type="email"), ErasureKey("phone", id_type="phone")],
        )
    ]
