"""singer-sdk's standard tap test suite for tap-stripe, against the local Stripe sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from singer_sdk.testing import SuiteConfig
from starlette.types import ASGIApp

from plugins.connectors.sandbox import SandboxOptions
from plugins.connectors.testing import standard_tap_test_class
from taps.stripe.sandbox import DEFAULT_API_KEY, create_sandbox
from taps.stripe.tap import TapStripe


def sandbox() -> ASGIApp:
    return create_sandbox(SandboxOptions(records=40))


def config(url: str, _: Path) -> dict[str, Any]:
    return {"api_key": DEFAULT_API_KEY, "api_url": url, "start_date": "2024-01-01T00:00:00Z"}


# The sandbox is started and stopped by the class's fixtures (see standard_tap_test_class).
TestTapStripe = standard_tap_test_class(TapStripe, sandbox, config, suite_config=SuiteConfig(max_records_limit=30))
