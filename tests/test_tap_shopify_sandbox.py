"""The Shopify sandbox follows the Admin GraphQL API's documented protocol: auth, real GraphQL validation, cursor
pages, search filters, calculated query cost and the leaky-bucket throttle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from plugins.manager import get_source
from taps.shopify.sandbox import DEFAULT_ACCESS_TOKEN, CostBucket, create_sandbox
from taps.shopify.streams import STREAM_TYPES
from taps.shopify.synthetic_store import SyntheticShop
from taps.shopify.tap import TapShopify

HEADERS = {"X-Shopify-Access-Token": DEFAULT_ACCESS_TOKEN}
PAGE_QUERY = """
query($first: Int!, $after: String, $query: String) {
  customers(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    nodes { id updatedAt }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(create_sandbox(SandboxOptions(records=30), bucket=CostBucket(restore_rate=100_000))) as server:
        yield server


def graphql(server: SandboxServer, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
    headers = kw.pop("headers", HEADERS)
    url = f"{server.url}/admin/api/2026-01/graphql.json"
    return requests.post(url, json={"query": query, "variables": variables or {}}, headers=headers, timeout=10)


def test_request_without_the_access_token_header_is_401(sandbox: SandboxServer) -> None:
    response = graphql(sandbox, "{ customers(first: 1) { nodes { id } } }", headers={})
    assert response.status_code == 401
    assert "Invalid API key or access token" in response.json()["errors"]


def test_unknown_field_is_rejected_with_http_200_and_an_errors_array(sandbox: SandboxServer) -> None:
    response = graphql(sandbox, "{ customers(first: 1) { nodes { email } } }")
    assert response.status_code == 200
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["message"] == "Field 'email' doesn't exist on type 'Customer'"
    assert body["errors"][0]["extensions"]["code"] == "undefinedField"


def test_syntax_error_is_rejected_with_its_location(sandbox: SandboxServer) -> None:
    body = graphql(sandbox, "{ customers(first: 1) { nodes { id }").json()
    assert body["errors"][0]["locations"]
    assert "Syntax Error" in body["errors"][0]["message"]


def test_connection_without_first_or_last_is_rejected(sandbox: SandboxServer) -> None:
    body = graphql(sandbox, "{ customers { nodes { id } } }").json()
    assert body["errors"][0]["message"] == "you must provide one of first or last"


def test_query_over_the_single_query_cost_limit_is_rejected(sandbox: SandboxServer) -> None:
    body = graphql(sandbox, "{ customers(first: 250) { nodes { addressesV2(first: 5) { nodes { id } } } } }").json()
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert body["errors"][0]["extensions"]["cost"] == 2 + 250 * (1 + 2 + 5)


def test_pages_are_sorted_by_updated_at_and_follow_end_cursor(sandbox: SandboxServer) -> None:
    seen: list[dict[str, str]] = []
    after = None
    while True:
        page = graphql(sandbox, PAGE_QUERY, {"first": 7, "after": after}).json()["data"]["customers"]
        seen += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len({node["id"] for node in seen}) == 30
    assert [node["updatedAt"] for node in seen] == sorted(node["updatedAt"] for node in seen)


def test_updated_at_search_filter_keeps_records_at_or_after_the_instant(sandbox: SandboxServer) -> None:
    everything = graphql(sandbox, PAGE_QUERY, {"first": 50}).json()["data"]["customers"]["nodes"]
    pivot = everything[10]["updatedAt"]
    body = graphql(sandbox, PAGE_QUERY, {"first": 50, "query": f"updated_at:>='{pivot}'"}).json()
    assert [n["id"] for n in body["data"]["customers"]["nodes"]] == [n["id"] for n in everything[10:]]


def test_search_terms_combine_with_or_and_negation(sandbox: SandboxServer) -> None:
    shop = sandbox.app.state.shopify.shop  # type: ignore[attr-defined]
    first, second = shop.customers[0], shop.customers[1]
    either = f"id:{first['legacyResourceId']} OR id:{second['legacyResourceId']}"
    body = graphql(sandbox, PAGE_QUERY, {"first": 50, "query": either}).json()
    assert {n["id"] for n in body["data"]["customers"]["nodes"]} == {first["id"], second["id"]}
    body = graphql(sandbox, PAGE_QUERY, {"first": 50, "query": f"-id:{first['legacyResourceId']}"}).json()
    assert len(body["data"]["customers"]["nodes"]) == 29
    email = first["defaultEmailAddress"]["emailAddress"]
    body = graphql(sandbox, PAGE_QUERY, {"first": 50, "query": f'email:"{email}"'}).json()
    assert [n["id"] for n in body["data"]["customers"]["nodes"]] == [first["id"]]


def test_unknown_search_field_is_ignored_with_a_warning(sandbox: SandboxServer) -> None:
    body = graphql(sandbox, PAGE_QUERY, {"first": 50, "query": "colour:blue"}).json()
    assert len(body["data"]["customers"]["nodes"]) == 30
    assert body["extensions"]["search"][0]["warnings"][0]["field"] == "colour"


def test_cost_extensions_report_requested_actual_and_throttle_status(sandbox: SandboxServer) -> None:
    body = graphql(sandbox, PAGE_QUERY, {"first": 50}).json()
    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 2 + 50
    assert cost["actualQueryCost"] == 2 + 30
    assert set(cost["throttleStatus"]) == {"maximumAvailable", "currentlyAvailable", "restoreRate"}


def test_request_is_throttled_when_the_bucket_cannot_cover_its_requested_cost() -> None:
    app = create_sandbox(SandboxOptions(records=60), bucket=CostBucket(maximum=100, restore_rate=1))
    with SandboxServer(app) as server:
        first = graphql(server, PAGE_QUERY, {"first": 60}).json()
        throttled = graphql(server, PAGE_QUERY, {"first": 60}).json()
    assert "data" in first
    assert throttled["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert throttled["extensions"]["cost"]["actualQueryCost"] is None
    assert throttled["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] < 62
    assert app.state.shopify.bucket.throttled == 1


def test_customer_update_mutation_moves_updated_at_to_now(sandbox: SandboxServer) -> None:
    before = graphql(sandbox, PAGE_QUERY, {"first": 1}).json()["data"]["customers"]["nodes"][0]
    mutation = "mutation($input: CustomerInput!) { customerUpdate(input: $input) { customer { id updatedAt } } }"
    body = graphql(sandbox, mutation, {"input": {"id": before["id"], "note": "Geänderte Notiz"}}).json()
    assert body["data"]["customerUpdate"]["customer"]["updatedAt"] > before["updatedAt"]
    assert body["extensions"]["cost"]["requestedQueryCost"] == 10


@pytest.mark.parametrize("metafields", [False, True], ids=["plain", "with-metafields"])
def test_each_stream_knows_the_requested_cost_of_its_pages(sandbox: SandboxServer, metafields: bool) -> None:
    config = {"shop": "cdp", "access_token": DEFAULT_ACCESS_TOKEN, "api_url": sandbox.url}
    if metafields:
        config["metafields"] = ["customers", "orders", "products", "draft_orders"]
    tap = TapShopify(config=config, validate_config=True)
    for stream_type in STREAM_TYPES:
        stream = tap.streams[stream_type.name]
        payload = stream.prepare_request_payload(None, None)
        body = graphql(sandbox, payload["query"], payload["variables"]).json()
        assert "errors" not in body, (stream.name, body.get("errors"))
        assert body["extensions"]["cost"]["requestedQueryCost"] == stream.requested_cost, stream.name
        assert stream.requested_cost <= 500


def test_same_seed_builds_the_same_store_with_unicode_and_nested_shapes() -> None:
    first, again = SyntheticShop(records=12, seed=7), SyntheticShop(records=12, seed=7)
    assert first.customers == again.customers
    assert [(o["id"], o["totalPriceSet"], [i["name"] for i in o["_lineItems"]]) for o in first.orders] == [
        (o["id"], o["totalPriceSet"], [i["name"] for i in o["_lineItems"]]) for o in again.orders
    ]
    assert SyntheticShop(records=12, seed=8).customers != first.customers
    names = " ".join(customer["displayName"] for customer in first.customers)
    assert any(ord(char) > 127 for char in names)
    assert all(order["_lineItems"] for order in first.orders)
    assert all(product["_variants"] for product in first.products)
    assert all(customer["defaultAddress"]["countryCodeV2"] for customer in first.customers)


def test_shopify_is_registered_as_a_source_with_its_sandbox() -> None:
    source = get_source("shopify")
    assert source.load_tap() is TapShopify
    assert source.load_sandbox() is create_sandbox
    assert list(source.streams) == ["customers", "orders", "products", "inventory_items", "draft_orders"]


RUN_BULK = """mutation($query: String!) {
  bulkOperationRunQuery(query: $query) { bulkOperation { id status } userErrors { field message code } }
}"""
POLL_BULK = """query($id: ID!) {
  node(id: $id) { ... on BulkOperation { id status errorCode objectCount rootObjectCount fileSize url } }
}"""
ORDERS_BULK = "{ orders { edges { node { id name lineItems { edges { node { id sku } } } } } } }"


def run_bulk(server: SandboxServer, query: str) -> dict[str, Any]:
    return dict(graphql(server, RUN_BULK, {"query": query}).json()["data"]["bulkOperationRunQuery"])


def test_a_bulk_query_runs_then_completes_with_a_signed_jsonl_result(sandbox: SandboxServer) -> None:
    started = run_bulk(sandbox, ORDERS_BULK)
    assert started["userErrors"] == []
    operation = started["bulkOperation"]
    assert operation["status"] in ("CREATED", "RUNNING")
    statuses = []
    while not statuses or statuses[-1]["status"] != "COMPLETED":
        statuses.append(graphql(sandbox, POLL_BULK, {"id": operation["id"]}).json()["data"]["node"])
        assert len(statuses) < 10
    done = statuses[-1]
    current = graphql(sandbox, "{ currentBulkOperation { id status } }").json()["data"]["currentBulkOperation"]
    assert current == {"id": operation["id"], "status": "COMPLETED"}

    assert requests.get(done["url"].split("?")[0], timeout=10).status_code == 403  # the URL is signed
    result = requests.get(done["url"], timeout=10)  # and needs no access token
    lines = [orjson.loads(line) for line in result.content.splitlines()]
    orders = [line for line in lines if "__parentId" not in line]
    items = [line for line in lines if "__parentId" in line]
    shop = sandbox.app.state.shopify.shop  # type: ignore[attr-defined]
    assert len(orders) == len(shop.orders) == int(done["rootObjectCount"])
    assert len(lines) == int(done["objectCount"])
    assert int(done["fileSize"]) == len(result.content)
    assert all("lineItems" not in order for order in orders)  # nested connections are lines of their own
    by_order = {order["id"]: [i["id"] for i in order["_lineItems"]] for order in shop.orders}
    for order in orders:
        assert [item["id"] for item in items if item["__parentId"] == order["id"]] == by_order[order["id"]]


def test_one_bulk_query_at_a_time_per_shop(sandbox: SandboxServer) -> None:
    first = run_bulk(sandbox, ORDERS_BULK)["bulkOperation"]
    second = run_bulk(sandbox, ORDERS_BULK)
    assert second["bulkOperation"] is None
    [error] = second["userErrors"]
    assert error["code"] == "OPERATION_IN_PROGRESS"
    assert first["id"] in error["message"]


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ('{ node(id: "gid://shopify/Order/1") { id } }', "connection field at the top level"),
        ("{ orders { edges { node { name lineItems { edges { node { id } } } } } } }", "must select id"),
        ("{ orders { edges { node { id } } } customers { edges { node { id } } } }", "exactly one top-level field"),
        (
            "{ products { edges { node { id variants { edges { node { id"
            " metafields { edges { node { id } } } } } } } } } }",
            "nested more than 2 levels",
        ),
        (
            "{ products { edges { node { id"
            + "".join(f" {alias}: metafields {{ edges {{ node {{ id }} }} }}" for alias in "abcde")
            + " } } } }",
            "more than 5 connections",
        ),
        ("{ orders { edges { node { id nope } } } }", "Cannot query field 'nope'"),
        ("mutation { customerUpdate(input: {}) { userErrors { message } } }", "exactly one query operation"),
    ],
)
def test_bulk_queries_shopify_refuses_are_user_errors(sandbox: SandboxServer, query: str, problem: str) -> None:
    result = run_bulk(sandbox, query)
    assert result["bulkOperation"] is None
    [error] = result["userErrors"]
    assert error["code"] == "INVALID"
    assert problem in error["message"]
