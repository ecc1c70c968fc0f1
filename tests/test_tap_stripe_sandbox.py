"""The Stripe sandbox follows Stripe's documented list protocol, deterministically, with injectable faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from plugins.descriptors import SandboxOptions
from plugins.sandbox import FaultPlan, SandboxServer
from taps.stripe.sandbox import DEFAULT_API_KEY, EVENT_RETENTION_SECONDS, create_sandbox

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with SandboxServer(create_sandbox(SandboxOptions(records=60))) as server:
        yield server.url


def _get(url: str, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{url}{path}", params=params, headers=AUTH, timeout=5)


def test_requests_without_a_valid_key_get_401(url: str) -> None:
    assert requests.get(f"{url}/v1/charges", timeout=5).status_code == 401
    bad = requests.get(f"{url}/v1/charges", headers={"Authorization": "Bearer sk_test_wrong_key_1234"}, timeout=5)
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "api_key_invalid"
    assert "sk_test_wrong_key_1234" not in bad.text  # Stripe masks the key it rejects
    basic = requests.get(f"{url}/v1/charges", auth=(DEFAULT_API_KEY, ""), timeout=5)
    assert basic.status_code == 200


def test_unknown_parameters_are_rejected_like_stripe(url: str) -> None:
    response = _get(url, "/v1/customers", sort="created")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "Received unknown parameter: sort",
        "code": "parameter_unknown",
        "param": "sort",
        "doc_url": "https://stripe.com/docs/error-codes/parameter-unknown",
    }
    assert "Request-Id" in response.headers


def test_lists_page_newest_first_with_starting_after_and_has_more(url: str) -> None:
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 25}
    while True:
        page = _get(url, "/v1/payment_intents", **params).json()
        assert page["object"] == "list"
        assert page["url"] == "/v1/payment_intents"
        seen += page["data"]
        if not page["has_more"]:
            break
        params["starting_after"] = page["data"][-1]["id"]
    assert len(seen) == 60
    assert len({obj["id"] for obj in seen}) == 60
    created = [obj["created"] for obj in seen]
    assert created == sorted(created, reverse=True)


def test_created_filters_bound_a_window(url: str) -> None:
    every = _get(url, "/v1/customers", limit=100).json()["data"]
    low, high = every[40]["created"], every[10]["created"]
    window = _get(url, "/v1/customers", limit=100, **{"created[gte]": low, "created[lt]": high}).json()["data"]
    assert {c["id"] for c in window} == {c["id"] for c in every[11:41]}


def test_subscriptions_leave_out_canceled_unless_status_all(url: str) -> None:
    default = _get(url, "/v1/subscriptions", limit=100).json()["data"]
    everything = _get(url, "/v1/subscriptions", limit=100, status="all").json()["data"]
    assert all(s["status"] != "canceled" for s in default)
    assert any(s["status"] == "canceled" for s in everything)
    assert len(everything) == 30


def test_events_cover_the_last_30_days_and_filter_by_type_wildcard(url: str) -> None:
    events = _get(url, "/v1/events", limit=100).json()["data"]
    newest = max(e["created"] for e in events)
    assert all(newest - e["created"] < EVENT_RETENTION_SECONDS for e in events)
    customer_events = _get(url, "/v1/events", limit=100, type="customer.*").json()["data"]
    assert customer_events
    assert all(e["type"].startswith("customer.") for e in customer_events)
    updated = customer_events[0]
    assert updated["data"]["previous_attributes"]["email"] != updated["data"]["object"]["email"]


def test_same_seed_same_data() -> None:
    first = create_sandbox(SandboxOptions(records=20, seed=7)).state.stripe.objects
    second = create_sandbox(SandboxOptions(records=20, seed=7)).state.stripe.objects
    other = create_sandbox(SandboxOptions(records=20, seed=8)).state.stripe.objects
    assert first["charges"] == second["charges"]
    assert first["charges"] != other["charges"]


def test_faults_are_injected_per_path_on_schedule() -> None:
    faults = FaultPlan(rate_limit_every=3, malformed_every=4, only=("/v1/refunds",))
    with SandboxServer(create_sandbox(SandboxOptions(records=20, faults=faults))) as server:
        responses = [_get(server.url, "/v1/refunds") for _ in range(4)]
        fifth = _get(server.url, "/v1/refunds")
        assert _get(server.url, "/v1/charges").status_code == 200  # other paths are untouched
        sixth = _get(server.url, "/v1/refunds")
    assert [r.status_code for r in responses] == [200, 200, 429, 200]
    with pytest.raises(ValueError):
        responses[3].json()  # the 4th answers 200 with a body cut off mid-page
    assert fifth.json()["object"] == "list"
    assert sixth.status_code == 429
    assert sixth.json()["error"]["code"] == "rate_limit"
