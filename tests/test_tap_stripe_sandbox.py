"""The Stripe sandbox follows Stripe's documented list protocol, deterministically, with injectable faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
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


def _all(url: str, resource: str, **params: Any) -> list[dict[str, Any]]:
    response = _get(url, f"/v1/{resource}", limit=100, **params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _sample(url: str, resource: str, path: str) -> Any:
    """A value of ``path`` (dotted) that some but not all listed objects have, so a filter on it must cut."""
    values = []
    for obj in _all(url, resource, **({"status": "all"} if resource == "subscriptions" else {})):
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values.append(value)
    return next(value for value in values if values.count(value) < len(values) and value is not None)


# Every filter parameter of every list (besides created, tested above): given a value some objects have, every
# object listed has it, and fewer are listed than without the filter. A sandbox that ignored the parameter fails.
FILTER_CASES = [
    ("customers", "email", "email"),
    ("charges", "customer", "customer"),
    ("charges", "payment_intent", "payment_intent"),
    ("invoices", "customer", "customer"),
    ("invoices", "status", "status"),
    ("invoices", "subscription", "subscription"),
    ("subscriptions", "customer", "customer"),
    ("subscriptions", "status", "status"),
    ("payment_intents", "customer", "customer"),
    ("prices", "currency", "currency"),
    ("prices", "product", "product"),
    ("prices", "type", "type"),
    ("refunds", "charge", "charge"),
    ("refunds", "payment_intent", "payment_intent"),
    ("events", "type", "type"),
]


@pytest.mark.parametrize(("resource", "param", "path"), FILTER_CASES)
def test_every_list_filter_filters(url: str, resource: str, param: str, path: str) -> None:
    value = _sample(url, resource, path)
    # Stripe lists canceled subscriptions only under status=all; the sample may be one of them.
    every_status = {"status": "all"} if resource == "subscriptions" and param != "status" else {}
    everything = _all(url, resource, **({"status": "all"} if resource == "subscriptions" else {}))
    filtered = _all(url, resource, **{param: value, **every_status})
    assert filtered
    assert len(filtered) < len(everything)
    assert all(obj[path] == value for obj in filtered)


def test_filters_on_nested_values_arrays_and_ranges(url: str) -> None:
    prices = _all(url, "prices", **{"recurring[interval]": "month", "recurring[usage_type]": "licensed"})
    assert prices
    assert all(p["recurring"] == {**p["recurring"], "interval": "month", "usage_type": "licensed"} for p in prices)
    assert len(prices) < len(_all(url, "prices"))

    subscriptions = _all(url, "subscriptions", status="all")
    price = subscriptions[0]["items"]["data"][0]["price"]["id"]
    on_price = _all(url, "subscriptions", status="all", price=price)
    assert {s["id"] for s in on_price} == {
        s["id"] for s in subscriptions if any(i["price"]["id"] == price for i in s["items"]["data"])
    }
    ends = sorted(s["current_period_end"] for s in subscriptions)
    later = _all(url, "subscriptions", status="all", **{"current_period_end[gt]": ends[len(ends) // 2]})
    assert later
    assert all(s["current_period_end"] > ends[len(ends) // 2] for s in later)
    assert _all(url, "subscriptions", status="all", **{"automatic_tax[enabled]": "true"}) == []

    products = _all(url, "products")
    wanted = [products[0]["id"], products[2]["id"]]
    by_ids = _all(url, "products", **{"ids[0]": wanted[0], "ids[1]": wanted[1]})  # the official clients' arrays
    assert {p["id"] for p in by_ids} == set(wanted)
    assert _all(url, "products", **{"ids[]": wanted[0]})[0]["id"] == wanted[0]
    assert _all(url, "prices", **{"lookup_keys[0]": "no_such_lookup_key"}) == []
    assert _all(url, "customers", test_clock="clock_none") == []
    inactive = _all(url, "products", active="false")
    assert {p["id"] for p in inactive} == {p["id"] for p in products if not p["active"]}
    delivered = _all(url, "events", delivery_success="true")
    assert delivered
    assert all(e["pending_webhooks"] == 0 for e in delivered)


@pytest.mark.parametrize(
    ("resource", "params", "param"),
    [
        ("customers", {"expand[]": "data.default_source"}, "expand[]"),  # the sandbox never expands: it says so
        ("customers", {"price": "price_1"}, "price"),  # a parameter of another list
        ("prices", {"recurring[cadence]": "month"}, "recurring[cadence]"),
        ("customers", {"created[after]": "1"}, "created[after]"),
        ("events", {"customer": "cus_1"}, "customer"),
    ],
)
def test_parameters_the_list_does_not_take_are_400_parameter_unknown(
    url: str, resource: str, params: dict[str, str], param: str
) -> None:
    response = _get(url, f"/v1/{resource}", **params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parameter_unknown"
    assert response.json()["error"]["param"] == param


def test_enumerated_parameters_refuse_other_values(url: str) -> None:
    response = _get(url, "/v1/invoices", status="settled")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"


def test_the_official_stripe_client_filters_events_by_types(url: str) -> None:
    import stripe

    client = stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": url}, max_network_retries=0)
    wanted = ["customer.created", "customer.updated"]
    filtered = list(client.v1.events.list(params={"types": wanted, "limit": 100}).auto_paging_iter())
    everything = list(client.v1.events.list(params={"limit": 100}).auto_paging_iter())
    assert filtered
    assert {event.type for event in filtered} <= set(wanted)
    assert len(filtered) == sum(event.type in wanted for event in everything) < len(everything)


def test_creates_with_an_idempotency_key_are_replayed_and_reuse_with_other_parameters_is_refused() -> None:
    import stripe

    with SandboxServer(create_sandbox(SandboxOptions(records=5))) as server:
        state = server.app.state.stripe  # type: ignore[attr-defined]
        client = stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": server.url}, max_network_retries=0)
        params = {"email": "ada@example.com", "metadata": {"crm_id": "42"}}
        first = client.v1.customers.create(params=params, options={"idempotency_key": "create-ada"})
        again = client.v1.customers.create(params=params, options={"idempotency_key": "create-ada"})
        assert again.id == first.id
        assert again.last_response.headers.get("Idempotent-Replayed") == "true"
        assert len(state.customers) == 6  # one created, not two
        with pytest.raises(stripe.IdempotencyError) as refused:
            client.v1.customers.create(params={"email": "bob@example.com"}, options={"idempotency_key": "create-ada"})
        assert refused.value.http_status == 400
        other = client.v1.customers.create(
            params={"email": "bob@example.com"}, options={"idempotency_key": "create-bob"}
        )
        assert other.id != first.id
        unknown = requests.post(
            f"{server.url}/v1/customers", data={"emial": "typo@example.com"}, headers=AUTH, timeout=5
        )
        assert unknown.status_code == 400
        assert unknown.json()["error"]["param"] == "emial"
        assert len(state.customers) == 7
