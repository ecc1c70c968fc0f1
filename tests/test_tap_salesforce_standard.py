"""singer-sdk's standard tap test suite, run against the Salesforce sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from plugins.connectors.sandbox import SandboxOptions
from plugins.connectors.testing import standard_tap_test_class
from taps.salesforce.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN, create_sandbox
from taps.salesforce.tap import TapSalesforce


def sandbox() -> ASGIApp:
    return create_sandbox(SandboxOptions(records=40, seed=11), page_size=25)


def config(url: str, folder: Path) -> dict[str, Any]:
    return {
        "token_url": f"{url}/services/oauth2/token",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "refresh_token": DEFAULT_REFRESH_TOKEN,
        "start_date": "2024-01-01T00:00:00Z",
        "dlq_url": str(folder / "dlq"),
    }


# The suite discovers the streams at import (describe calls): standard_tap_test_class serves that discovery from a
# sandbox it stops at once, and the tests from one the class's fixtures start and stop.
TestTapSalesforceStandard = standard_tap_test_class(TapSalesforce, sandbox, config)
