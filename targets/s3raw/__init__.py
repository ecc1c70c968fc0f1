"""target-s3raw: lands Singer records in the raw zone as gzip NDJSON batches."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import TargetDescriptor


@hookimpl
def cdp_targets() -> list[TargetDescriptor]:
    return [
        TargetDescriptor(
            name="s3raw",
            target="targets.s3raw.target:TargetS3Raw",
            description="The raw zone: gzip NDJSON batches on S3 or a local folder, partitioned by tenant and day.",
        )
    ]
