"""singer-sdk's standard tap test suite, run against the Salesforce sandbox."""

from __future__ import annotations

import atexit
import tempfile

from singer_sdk.testing import get_tap_test_class

from plugins.descriptors import SandboxOptions
from plugins.sandbox import SandboxServer
from taps.salesforce.sandbox import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN, create_sandbox
from taps.salesforce.tap import TapSalesforce

# The suite's class is built at import (it discovers the streams then), so its sandbox must already be listening.
_SANDBOX = SandboxServer(create_sandbox(SandboxOptions(records=40, seed=11), page_size=25))
_SANDBOX.start()
atexit.register(_SANDBOX.stop)
_DLQ = tempfile.TemporaryDirectory(prefix="cdp-sf-dlq-")
atexit.register(_DLQ.cleanup)

TestTapSalesforceStandard = get_tap_test_class(
    TapSalesforce,
    config={
        "token_url": f"{_SANDBOX.url}/services/oauth2/token",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "refresh_token": DEFAULT_REFRESH_TOKEN,
        "start_date": "2024-01-01T00:00:00Z",
        "dlq_url": _DLQ.name,
    },
)
