"""tap-stripe: settings and stream discovery."""

from __future__ import annotations

from singer_sdk import Stream, Tap
from singer_sdk import typing as th

from taps.stripe.streams import STREAM_TYPES


class TapStripe(Tap):
    """Singer tap for Stripe."""

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
            th.StringType,
            default="https://api.stripe.com",
            title="API URL",
            description="Base URL of the Stripe API; point it at a local sandbox for development.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description="Extract objects created at or after this instant on the first run (ISO-8601).",
        ),
    ).to_dict()

    def discover_streams(self) -> list[Stream]:
        return [stream_type(tap=self) for stream_type in STREAM_TYPES]


if __name__ == "__main__":
    TapStripe.cli()
