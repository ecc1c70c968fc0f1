"""What every sandbox shares: one typed fault plan, read the same way by each, and HTTPS with a throwaway CA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce

from plugins.connectors.sandbox import Fault, FaultPlan, FaultPlanError, SandboxOptions, SandboxServer
from taps.salesforce.sandbox import DEFAULT_ACCESS_TOKEN
from taps.salesforce.sandbox import create_sandbox as salesforce_sandbox
from taps.shopify.sandbox import create_sandbox as shopify_sandbox
from taps.stripe.sandbox import create_sandbox as stripe_sandbox

SANDBOXES: dict[str, Callable[[SandboxOptions], Any]] = {
    "stripe": stripe_sandbox,
    "shopify": shopify_sandbox,
    "salesforce": salesforce_sandbox,
}


def test_counted_faults_hit_the_last_burst_of_every_period() -> None:
    plan = FaultPlan(rate_limit_every=4, rate_limit_burst=2, malformed_every=3)
    faults = [plan.counted_fault(count) for count in range(1, 9)]
    rate_limit, malformed = Fault.RATE_LIMIT, Fault.MALFORMED
    # Requests 3-4 and 7-8 are rate limited; 3 and 6 would be cut off, and one fault per request: the first kind wins.
    assert faults == [None, None, rate_limit, rate_limit, None, malformed, rate_limit, rate_limit]


def test_an_outage_covers_the_requests_after_its_start() -> None:
    plan = FaultPlan(outage_after=2, outage_requests=3)
    assert [plan.hits(Fault.OUTAGE, count) for count in range(1, 7)] == [False, False, True, True, True, False]


def test_only_limits_counted_faults_to_some_resources() -> None:
    plan = FaultPlan(server_error_every=1, only=("/v1/charges",))
    assert plan.counted_fault(1, "/v1/charges") is Fault.SERVER_ERROR
    assert plan.counted_fault(1, "/v1/customers") is None


def test_resource_faults() -> None:
    plan = FaultPlan(failing=("Lead",), throttled=("Campaign",), denied=("draftOrders",))
    assert plan.resource_fault(["Lead"]) is Fault.FAILING
    assert plan.resource_fault(["Campaign", "Account"]) is Fault.THROTTLED
    assert plan.resource_fault(["orders", "draftOrders"]) is Fault.DENIED
    assert plan.resource_fault(["Account"]) is None


def test_parse_reads_typed_values() -> None:
    plan = FaultPlan.parse(
        ["rate_limit_every=5", "slow_seconds=0.5", "failing=/v1/charges,/v1/refunds", 'denied=["a"]']
    )
    assert plan == FaultPlan(
        rate_limit_every=5, slow_seconds=0.5, failing=("/v1/charges", "/v1/refunds"), denied=("a",)
    )
    assert plan.active() == ["rate_limit_every", "slow_seconds", "failing", "denied"]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["nope=1"], "unknown fault 'nope'; faults: rate_limit_every, "),
        (["rate_limit_every"], "'rate_limit_every' is not NAME=VALUE"),
        (["rate_limit_every=1.5"], "fault 'rate_limit_every' takes a whole number, not '1.5'"),
        (["slow_seconds=soon"], "fault 'slow_seconds' takes a number, not 'soon'"),
        (["server_error_every=3", "server_error_burst=4"], "fault 'server_error_burst' must be 1..server_error_every"),
    ],
)
def test_parse_refuses_bad_faults_in_one_line(pairs: list[str], message: str) -> None:
    with pytest.raises(FaultPlanError, match="^" + message.replace(".", r"\.").replace("[", r"\[")) as error:
        FaultPlan.parse(pairs)
    assert "\n" not in str(error.value)


def test_from_mapping_refuses_unknown_names() -> None:
    with pytest.raises(FaultPlanError, match="unknown fault 'fault_paths'"):
        FaultPlan.from_mapping({"rate_limit_every": 3, "fault_paths": ["/v1/charges"]})


@pytest.mark.parametrize(
    ("sandbox", "fault"), [("stripe", "session_uses"), ("shopify", "throttled"), ("salesforce", "denied")]
)
def test_each_sandbox_refuses_a_fault_it_does_not_inject(sandbox: str, fault: str) -> None:
    plan = FaultPlan.from_mapping({fault: 3 if fault == "session_uses" else ("x",)})
    with pytest.raises(FaultPlanError, match=f"the {sandbox} sandbox has no fault '{fault}'"):
        SANDBOXES[sandbox](SandboxOptions(records=5, faults=plan))


@pytest.mark.parametrize("sandbox", sorted(SANDBOXES))
def test_every_sandbox_answers_a_server_error_from_the_same_plan(sandbox: str) -> None:
    plan = FaultPlan(server_error_every=1, server_error_status=502)
    requests_by_sandbox = {
        "stripe": ("GET", "/v1/customers", {"Authorization": "Bearer sk_test_cdp_sandbox"}, None),
        "shopify": (
            "POST",
            "/admin/api/2026-01/graphql.json",
            {"X-Shopify-Access-Token": "shpat_cdp_sandbox"},
            {"query": "{ shop { name } }"},
        ),
        "salesforce": (
            "GET",
            "/services/data/v62.0/query",
            {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"},
            None,
        ),
    }
    method, path, headers, body = requests_by_sandbox[sandbox]
    params = {"q": "SELECT Id FROM Account"} if sandbox == "salesforce" else None
    with SandboxServer(SANDBOXES[sandbox](SandboxOptions(records=5, faults=plan))) as server:
        response = requests.request(method, server.url + path, headers=headers, json=body, params=params, timeout=10)
    assert response.status_code == 502


def test_a_sandbox_serves_https_that_clients_verify_with_its_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    with SandboxServer(stripe_sandbox(SandboxOptions(records=5)), tls=True) as server:
        assert server.url.startswith("https://127.0.0.1:")
        auth = {"Authorization": "Bearer sk_test_cdp_sandbox"}
        response = requests.get(f"{server.url}/v1/customers", headers=auth, verify=server.ca_file, timeout=10)
        assert response.status_code == 200
        assert len(response.json()["data"]) == 5
        with pytest.raises(requests.exceptions.SSLError):  # not a certificate anyone else trusts
            requests.get(f"{server.url}/v1/customers", headers=auth, verify=requests.certs.where(), timeout=10)


def test_simple_salesforce_pages_through_the_salesforce_sandbox_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    # simple-salesforce (the official client) speaks only HTTPS. requests lets REQUESTS_CA_BUNDLE override a session's
    # own `verify`, so the CA is given the way a developer would give it: in the environment.
    app = salesforce_sandbox(SandboxOptions(records=120), page_size=50)
    with SandboxServer(app, tls=True) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        client = Salesforce(instance_url=server.url, session_id=DEFAULT_ACCESS_TOKEN, version="62.0")
        result = client.query_all("SELECT Id, Name FROM Account")
        described = client.Account.describe()
        state = app.state.salesforce
    live = {row_id for row_id, row in state.org.rows["Account"].items() if not row["IsDeleted"]}
    assert len(live) > 50  # more than one page
    assert result["totalSize"] == len(live)
    assert {record["Id"] for record in result["records"]} == live
    assert described["name"] == "Account"
    assert state.requests_seen >= 1 + len(live) // 50  # the first page, and a queryMore for each further one
