"""Options every command shares, so each zone is chosen the same way everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

from plugins.core.zones import LAKE_ENV_VAR, Zone, resolve_zone_url

LakeUrlOption = Annotated[
    str | None,
    typer.Option(
        "--lake-url",
        help=f"Base URL of every zone: each is {{lake}}/raw, {{lake}}/dlq, {{lake}}/registry unless set on its own "
        f"[env {LAKE_ENV_VAR}]",
    ),
]

RawUrlOption = Annotated[
    str | None, typer.Option("--raw-url", help=f"Raw zone URL [env {Zone.RAW.env_var}; default {Zone.RAW.default_url}]")
]
DlqUrlOption = Annotated[
    str | None, typer.Option("--dlq-url", help=f"DLQ URL [env {Zone.DLQ.env_var}; default {Zone.DLQ.default_url}]")
]
RegistryUrlOption = Annotated[
    str | None,
    typer.Option(
        "--registry-url", help=f"Schema registry URL [env {Zone.REGISTRY.env_var}; default {Zone.REGISTRY.default_url}]"
    ),
]
ProcessedUrlOption = Annotated[
    str | None,
    typer.Option(
        "--processed-url",
        help=f"Processed zone URL (the Iceberg warehouse) [env {Zone.PROCESSED.env_var}; default "
        f"{Zone.PROCESSED.default_url}]",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON with stable keys.")]
S3EndpointOption = Annotated[
    str | None,
    typer.Option("--s3-endpoint-url", envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (default: AWS)."),
]

__all__ = [
    "DlqUrlOption",
    "JsonOption",
    "LakeUrlOption",
    "ProcessedUrlOption",
    "RawUrlOption",
    "RegistryUrlOption",
    "S3EndpointOption",
    "Zone",
    "resolve_zone_url",
]
