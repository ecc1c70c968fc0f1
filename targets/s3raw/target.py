"""target-s3raw: settings and the sink that writes each stream."""

from __future__ import annotations

from typing import Any

from singer_sdk import Target
from singer_sdk import typing as th

from plugins.errors import ConfigError
from plugins.layout import validate_name
from plugins.raw_zone import RawZoneWriter
from plugins.storage import ObjectStore
from targets.s3raw.sinks import RawZoneSink

DEFAULT_BATCH_SIZE = 20_000


class TargetS3Raw(Target):
    """Singer target for the raw zone."""

    name = "target-s3raw"
    default_sink_class = RawZoneSink

    config_jsonschema = th.PropertiesList(
        th.Property(
            "raw_url",
            th.StringType,
            required=True,
            title="Raw zone URL",
            description="Where batches land: a local folder, a file:// URL or s3://bucket/prefix.",
        ),
        th.Property("tenant", th.StringType, required=True, title="Tenant", description="Tenant name, e.g. 'acme'."),
        th.Property(
            "provider", th.StringType, required=True, title="Provider", description="Source name, e.g. 'stripe'."
        ),
        th.Property(
            "batch_size",
            th.IntegerType,
            default=DEFAULT_BATCH_SIZE,
            title="Batch size",
            description="Records per batch file and stream.",
        ),
        th.Property(
            "s3_endpoint_url",
            th.StringType,
            title="S3 endpoint URL",
            description="An S3-compatible endpoint (MinIO, moto); default AWS or AWS_ENDPOINT_URL.",
        ),
    ).to_dict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        batch_size = self.config.get("batch_size", DEFAULT_BATCH_SIZE)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch_size", f"must be a whole number of at least 1, got {batch_size!r}")
        self.raw_writer = RawZoneWriter(
            ObjectStore(self.config["raw_url"], s3_endpoint_url=self.config.get("s3_endpoint_url"), setting="raw_url"),
            tenant=validate_name("tenant", self.config["tenant"]),
            provider=validate_name("provider", self.config["provider"]),
        )


if __name__ == "__main__":
    TargetS3Raw.cli()
