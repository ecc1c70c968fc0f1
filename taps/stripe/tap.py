"""tap-stripe: settings and stream discovery."""

from __future__ import annotations

from singer_sdk import Stream
from singer_sdk import typing as th

from plugins.connectors.tap_runtime import COMMON_TAP_SETTINGS, HTTP_URL_PATTERN, CdpTap
from taps.stripe.client import DEFAULT_START
from taps.stripe.streams import STREAM_TYPES


class TapStripe(CdpTap):
    """Singer tap for Stripe: nine list endpoints, incremental on ``created``, updates through ``events``."""

    name = "tap-stripe"

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_key",
            th.StringType,
            required=True,
            secret=True,
            title="API key",
            description="A Stripe secret or restricted key (sk_live_..., rk_live_...; sk_test_... in test mode).",
        ),
        th.Property(
            "api_url",
            th.StringType(pattern=HTTP_URL_PATTERN),
            default="https://api.stripe.com",
            title="API URL",
            description="Base URL of the Stripe API; point it at a local sandbox for development.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description=f"Extract objects created at or after this instant on the first run (default {DEFAULT_START}).",
        ),
        th.Property(
            "window_days",
            th.NumberType(exclusive_minimum=0),
            default=30,
            title="Window (days)",
            description=(
                "Width of the 'created' windows a sync walks through in ascending order; the bookmark is saved after "
                "each window. Smaller windows checkpoint more often; empty windows widen automatically."
            ),
        ),
        th.Property(
            "api_version",
            th.StringType(pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?(?!\n)$"),
            title="API version",
            description="Stripe-Version header to pin object shapes (e.g. 2024-06-20); default: the account's version.",
        ),
        *COMMON_TAP_SETTINGS,
    ).to_dict()

    def discover_streams(self) -> list[Stream]:
        return [stream_type(tap=self) for stream_type in STREAM_TYPES]


if __name__ == "__main__":
    TapStripe.cli()
