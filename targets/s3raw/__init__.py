"""target-s3raw: lands Singer records in the raw zone as gzip NDJSON batches."""

from __future__ import annotations

from plugins import hookimpl
from plugins.descriptors import DestinationDescriptor
from targets.s3raw.target import TargetS3Raw


@hookimpl
def cdp_destinations() -> list[DestinationDescriptor]:
    return [
        DestinationDescriptor(
            name="s3raw",
            target_class=TargetS3Raw,
            description="The raw zone: gzip NDJSON batches on S3 or a local folder, partitioned by tenant and day.",
        )
    ]
