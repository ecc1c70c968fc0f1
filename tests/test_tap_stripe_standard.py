"""singer-sdk's standard tap test suite for tap-stripe, against the local Stripe sandbox."""

from __future__ import annotations

from singer_sdk.testing import SuiteConfig, get_tap_test_class

from plugins.descriptors import SandboxOptions
from plugins.sandbox import SandboxServer
from taps.stripe.sandbox import DEFAULT_API_KEY, create_sandbox
from taps.stripe.tap import TapStripe

# The suite's class is built at import time from a config, so the sandbox starts here (a daemon thread).
_SANDBOX = SandboxServer(create_sandbox(SandboxOptions(records=40)))
_SANDBOX.start()

TestTapStripe = get_tap_test_class(
    TapStripe,
    config={"api_key": DEFAULT_API_KEY, "api_url": _SANDBOX.url, "start_date": "2024-01-01T00:00:00Z"},
    suite_config=SuiteConfig(max_records_limit=30),
)
