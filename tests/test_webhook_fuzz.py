"""A bounded fuzz run of the webhook receiver over real HTTP: arbitrary headers and bodies, signed and unsigned.

Whatever arrives, the receiver answers without a 5xx (its log is healthy throughout), keeps serving, and stores each
acknowledged event exactly once. ``CDP_FUZZ_SECONDS`` sets the budget (20 s by default; docs/webhooks.md says how to run
it longer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taps.stripe.webhook import StripeSignatureScheme
from tests.test_webhook_receiver import SECRETS, _serve

FUZZ_SECONDS = float(os.environ.get("CDP_FUZZ_SECONDS", "20"))
HEADER_NAMES = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,30}\Z")
# What an HTTP client can send: visible ASCII and inner spaces (httpx refuses surrounding whitespace).
HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(str.strip)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)  # Beyond 64 bits too.
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)  # Any code point, \u0000 included.
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn, provider: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "event", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    event_id = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12))
    data: Any = draw(JSON_VALUES)
    if kind == "deep":
        for _ in range(draw(st.integers(min_value=200, max_value=600))):
            data = {"x": data}
    if provider == "shopify":
        resource = draw(st.sampled_from(["Order", "Customer", "Product"]))
        document = {"id": event_id, "admin_graphql_api_id": f"gid://shopify/{resource}/1", "data": data}
    elif provider == "salesforce":
        header = {"entityName": "Contact", "changeType": "CREATE", "transactionKey": event_id, "sequenceNumber": 1}
        document = {"payload": {"ChangeEventHeader": header, "data": data}}
    else:
        document = {"id": f"evt_{event_id}", "object": "event", "type": "fuzz.event", "data": data}
    return json.dumps(document).encode()


def signature_headers(provider: str, tenant: str, body: bytes, topic: str) -> dict[str, str]:
    secrets = SECRETS.get(f"CDP_WEBHOOK_SECRET__{tenant.upper()}__{provider.upper()}", "unknown").split(",")
    secret = secrets[0]
    if provider == "stripe":
        return {"Stripe-Signature": StripeSignatureScheme().sign(body, secret, int(time.time()))}
    if provider == "shopify":
        return {
            "X-Shopify-Hmac-Sha256": base64.b64encode(
                hmac.new(secret.encode(), body, hashlib.sha256).digest()
            ).decode(),
            "X-Shopify-Topic": topic,
            "X-Shopify-Webhook-Id": hashlib.sha256(body).hexdigest()[:16],
            "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
        }
    return {"X-Salesforce-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    provider = draw(st.sampled_from(["stripe", "shopify", "salesforce", "paypal"]))
    tenant = draw(st.sampled_from(["acme", "acme", "acme", "beta", "nobody", "acme-x"]))  # Mostly a served tenant.
    body = draw(bodies(provider))
    headers = draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6))
    if draw(st.booleans()):  # Signed with the tenant's secret (what a provider sends), else arbitrary headers only.
        topic = draw(st.sampled_from(["orders/create", "customers/update", "products/delete", "app/uninstalled"]))
        headers.update(signature_headers(provider, tenant, body, topic))
    return f"/webhooks/{tenant}/{provider}", body, headers


def test_fuzzed_requests_get_no_5xx_and_every_acknowledged_event_is_stored_once(tmp_path: Path) -> None:
    acknowledged: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    settings_ = {"rate_per_second": 0, "unverified_rate_per_second": 0}
    with _serve(tmp_path, **settings_) as server, httpx.Client(base_url=server.url, timeout=30) as client:

        @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(requests())
        def send(request: tuple[str, bytes, dict[str, str]]) -> None:
            path, body, headers = request
            response = client.post(path, content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (response.status_code, response.text, path, headers)
            if response.status_code == 200:
                acknowledged[path] += response.json()["stored"]

        deadline = time.monotonic() + FUZZ_SECONDS
        while time.monotonic() < deadline:
            send()
        assert server.receiver.log.failed is None
        body = json.dumps({"id": "evt_after_fuzz", "object": "event", "type": "x"}).encode()
        after = client.post(
            "/webhooks/acme/stripe", content=body, headers=signature_headers("stripe", "acme", body, "")
        )
        assert after.status_code == 200  # Still serving.
        acknowledged["/webhooks/acme/stripe"] += 1

        stored: Counter[tuple[str, str, str]] = Counter()
        for path in acknowledged:
            _, _, tenant, provider = path.split("/")
            handler = server.receiver.handlers[provider]
            for stream in handler.streams:
                for item in server.log.read(tenant, provider, stream):
                    stored[tenant, provider, item.entry.event_id] += 1
    assert all(count == 1 for count in stored.values())  # No event stored twice.
    assert sum(stored.values()) == sum(acknowledged.values())  # Every acknowledged event, and nothing else.
    assert all(statuses[status] > 0 for status in (200, 202, 401))  # The run reached every outcome.
    print(f"fuzz: {sum(statuses.values())} requests {dict(sorted(statuses.items()))}")
