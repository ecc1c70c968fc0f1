"""tap-shopify: settings and stream discovery."""

from __future__ import annotations

from singer_sdk import Stream
from singer_sdk import typing as th

from plugins.connectors.tap_runtime import COMMON_TAP_SETTINGS, HTTP_URL_PATTERN, CdpTap
from taps.shopify.client import DEFAULT_API_VERSION, CostBudget
from taps.shopify.streams import STREAM_TYPES

METAFIELD_STREAMS = [str(stream.name) for stream in STREAM_TYPES if stream.supports_metafields]  # type: ignore[misc]


class TapShopify(CdpTap):
    """Singer tap for Shopify's GraphQL Admin API."""

    name = "tap-shopify"

    config_jsonschema = th.PropertiesList(
        th.Property(
            "shop",
            th.StringType,
            required=True,
            title="Shop",
            description="The store's myshopify name, e.g. 'acme' for acme.myshopify.com.",
        ),
        th.Property(
            "access_token",
            th.StringType,
            required=True,
            secret=True,
            title="Access token",
            description="Admin API access token (shpat_...) with read scopes for the selected streams.",
        ),
        th.Property(
            "api_version",
            th.StringType(pattern=r"^(\d{4}-(0[1-9]|1[0-2])|unstable)(?!\n)$"),
            default=DEFAULT_API_VERSION,
            title="API version",
            description="Admin API version (YYYY-MM). The tap's queries follow 2026-01 (e.g. defaultEmailAddress).",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description="On the first run, extract records updated at or after this instant (ISO-8601).",
        ),
        th.Property(
            "api_url",
            th.StringType(pattern=HTTP_URL_PATTERN),
            title="API URL",
            description="Base URL override (default https://{shop}.myshopify.com); point it at a local sandbox.",
        ),
        th.Property(
            "metafields",
            th.ArrayType(th.StringType(allowed_values=METAFIELD_STREAMS)),
            default=[],
            title="Streams with metafields",
            description=f"Streams whose records include their metafields (any of {', '.join(METAFIELD_STREAMS)}).",
        ),
        th.Property(
            "bulk_operations",
            th.BooleanType,
            default=True,
            title="Bulk operations",
            description="Run backfills as bulk query operations (see bulk_threshold_days); false: always page.",
        ),
        th.Property(
            "bulk_threshold_days",
            th.NumberType(minimum=0),
            default=7,
            title="Bulk threshold (days)",
            description=(
                "A stream's sync that starts more than this many days back (from its bookmark, else start_date), "
                "and every first sync without a start_date, runs as one bulk query operation; newer increments page."
            ),
        ),
        th.Property(
            "bulk_poll_interval_seconds",
            th.NumberType(exclusive_minimum=0),
            default=5,
            title="Bulk poll interval (seconds)",
            description="Wait between polls of a running bulk operation (and for a busy bulk query slot).",
        ),
        th.Property(
            "bulk_timeout_seconds",
            th.NumberType(exclusive_minimum=0),
            default=3600,
            title="Bulk timeout (seconds)",
            description="Give up on a bulk operation (DLQ, stream skipped, bookmark kept) after this long.",
        ),
        *COMMON_TAP_SETTINGS,
    ).to_dict()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cost_budget = CostBudget()

    def discover_streams(self) -> list[Stream]:
        return [stream_type(tap=self) for stream_type in STREAM_TYPES]


if __name__ == "__main__":
    TapShopify.cli()
