"""tap-shopify against its sandbox: full and incremental syncs, resume after a kill, the cost throttle, failures to
the DLQ, and singer-sdk's standard tap tests."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.types import ASGIApp

from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.connectors.tap_runtime import StreamsFailedError
from plugins.connectors.testing import FakeClock, run_tap, run_tap_process, standard_tap_test_class, start_tap_process
from plugins.core.errors import ConfigError
from taps.shopify import client as shopify_client
from taps.shopify import tap as shopify_tap
from taps.shopify.client import CostBudget, ShopifyStream
from taps.shopify.sandbox import DEFAULT_ACCESS_TOKEN, CostBucket, create_sandbox
from taps.shopify.streams import OrdersStream, ProductsStream
from taps.shopify.synthetic_store import iso
from taps.shopify.tap import TapShopify

RECORDS = 24
SECRET = "shpat_0123456789abcdef_never_logged"
FAST_BUCKET = {"maximum": 1000.0, "restore_rate": 100_000.0}


def start_sandbox(faults: FaultPlan | None = None, bucket: CostBucket | None = None) -> SandboxServer:
    options = SandboxOptions(records=RECORDS, credentials={"access_token": SECRET}, faults=faults or FaultPlan())
    return SandboxServer(create_sandbox(options, bucket=bucket or CostBucket(**FAST_BUCKET)))


def tap_config(server: SandboxServer, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "shop": "cdp-sandbox",
        "access_token": SECRET,
        "api_url": server.url,
        "dlq_url": str(tmp_path / "dlq"),
        "tenant": "acme",
        "bulk_operations": False,  # these tests are about paging; the bulk tests turn it on
        **extra,
    }


def expected_counts(server: SandboxServer) -> dict[str, int]:
    shop = server.app.state.shopify.shop  # type: ignore[attr-defined]
    return {
        "customers": len(shop.customers),
        "orders": len(shop.orders),
        "products": len(shop.products),
        "inventory_items": len(shop.inventory_items),
        "draft_orders": len(shop.draft_orders),
    }


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with start_sandbox() as server:
        yield server


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries keep their count and backoff shape, in milliseconds instead of seconds."""
    monkeypatch.setattr(ShopifyStream, "backoff_base_seconds", 0.01)
    monkeypatch.setattr(ShopifyStream, "request_timeout_seconds", 1.0)


def test_full_sync_emits_every_record_of_every_stream(sandbox: SandboxServer, tmp_path: Path) -> None:
    run = run_tap(TapShopify, tap_config(sandbox, tmp_path, metafields=["customers"]))
    assert run.error is None
    assert run.counts() == expected_counts(sandbox)
    order = run.records("orders")[0]
    assert order["lineItems"]
    assert order["lineItems"][0]["variant"]["id"].startswith("gid://shopify/ProductVariant/")
    assert all(isinstance(product["variants"], list) for product in run.records("products"))
    assert any(customer["metafields"] for customer in run.records("customers"))
    assert "metafields" not in run.records("orders")[0]


def test_nested_connections_longer_than_a_page_are_completed_by_follow_up_queries(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OrdersStream, "nested", (replace(OrdersStream.nested[0], first=2),))
    monkeypatch.setattr(ProductsStream, "nested", (replace(ProductsStream.nested[0], first=1),))
    monkeypatch.setattr(shopify_client, "METAFIELDS", replace(shopify_client.METAFIELDS, first=1))
    run = run_tap(TapShopify, tap_config(sandbox, tmp_path, metafields=["customers"]))
    shop = sandbox.app.state.shopify.shop  # type: ignore[attr-defined]
    assert run.error is None
    assert max(len(order["_lineItems"]) for order in shop.orders) > 2
    line_items = {order["id"]: [item["id"] for item in order["_lineItems"]] for order in shop.orders}
    assert {o["id"]: [item["id"] for item in o["lineItems"]] for o in run.records("orders")} == line_items
    variants = {product["id"]: len(product["_variants"]) for product in shop.products}
    assert {p["id"]: len(p["variants"]) for p in run.records("products")} == variants
    metafields = {customer["id"]: len(customer["_metafields"]) for customer in shop.customers}
    assert max(metafields.values()) > 1
    assert {c["id"]: len(c["metafields"]) for c in run.records("customers")} == metafields


def test_incremental_rerun_emits_only_changed_rows(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = tap_config(sandbox, tmp_path)
    first = run_tap(TapShopify, config)
    customers = first.records("customers")
    changed = {customers[2]["id"], customers[9]["id"]}
    mutation = "mutation($input: CustomerInput!) { customerUpdate(input: $input) { userErrors { message } } }"
    for customer_id in changed:
        requests.post(
            f"{sandbox.url}/admin/api/2026-01/graphql.json",
            json={"query": mutation, "variables": {"input": {"id": customer_id, "note": "Nouvelle note ✨"}}},
            headers={"X-Shopify-Access-Token": SECRET},
            timeout=10,
        ).raise_for_status()

    second = run_tap(TapShopify, config, state=first.last_state)

    assert second.error is None
    boundary = customers[-1]["id"]  # the bookmark's own record: `updated_at:>=` re-reads it (at-least-once)
    assert {c["id"] for c in second.records("customers")} == changed | {boundary}
    for stream in ("orders", "products", "draft_orders"):
        assert {r["updatedAt"] for r in second.records(stream)} == {first.bookmark(stream)}, stream


def test_start_date_limits_the_first_run(sandbox: SandboxServer, tmp_path: Path) -> None:
    everything = run_tap(TapShopify, tap_config(sandbox, tmp_path)).records("customers")
    start = everything[len(everything) // 2]["updatedAt"]
    run = run_tap(TapShopify, tap_config(sandbox, tmp_path, start_date=start))
    assert [c["id"] for c in run.records("customers")] == [c["id"] for c in everything[len(everything) // 2 :]]


def test_killed_run_resumes_from_its_last_state(tmp_path: Path) -> None:
    slow = FaultPlan(slow_every=2, slow_seconds=0.15)
    with start_sandbox(faults=slow) as server:
        config = tap_config(server, tmp_path)
        process = start_tap_process("tap-shopify", config)
        # Mid-way through orders: killed as soon as an orders checkpoint is out.
        process.wait_for_state(lambda run: run.bookmark("orders") is not None, 60, "an orders checkpoint")
        killed = process.kill()
        resumed = run_tap_process("tap-shopify", config, state=killed.last_state, timeout=120)
        total = expected_counts(server)

    assert killed.exit_code != 0
    assert resumed.exit_code == 0
    assert 0 < len(killed.records("orders")) < total["orders"]
    assert len(resumed.records("orders")) < total["orders"]
    assert len(resumed.records("customers")) == 1  # only the bookmark's own record
    seen = {r["id"] for r in killed.records("orders")} | {r["id"] for r in resumed.records("orders")}
    assert len(seen) == total["orders"]


def test_max_runtime_stop_ends_cleanly_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_sandbox(faults=FaultPlan(slow_every=2, slow_seconds=0.2)) as server:
        config = tap_config(server, tmp_path, max_runtime_seconds=1)
        with monkeypatch.context() as patched:  # Each look at the clock costs a quarter second: out after a few pages.
            patched.setattr(TapShopify, "clock", staticmethod(FakeClock(tick=0.25)))
            stopped = run_tap(TapShopify, config)
        resumed = run_tap(TapShopify, {**config, "max_runtime_seconds": 120}, state=stopped.last_state)
        total = expected_counts(server)
    assert stopped.error is None
    assert sum(stopped.counts().values()) < sum(total.values())
    assert resumed.error is None
    for stream, count in total.items():
        seen = {r["id"] for r in stopped.records(stream)} | {r["id"] for r in resumed.records(stream)}
        assert len(seen) == count, stream


def test_cost_budget_is_respected_so_the_bucket_never_throttles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tap and the bucket share a clock that moves only when the tap waits (and a millisecond per reading, so a
    # later reading is always later): however slow the machine, the bucket refills only while the tap waits for it.
    clock = FakeClock(tick=0.001)
    monkeypatch.setattr(shopify_tap, "CostBudget", partial(CostBudget, clock=clock, sleep=clock.advance))
    bucket = CostBucket(maximum=600, restore_rate=1500, clock=clock)  # pages request up to ~500: the tap must wait
    with caplog.at_level(logging.INFO), start_sandbox(bucket=bucket) as server:
        run = run_tap(TapShopify, tap_config(server, tmp_path))
        expected = expected_counts(server)
    assert run.error is None
    assert run.counts() == expected
    assert any(getattr(record, "cdp_event", None) == "tap.pace" for record in caplog.records)
    assert bucket.throttled == 0
    assert bucket.lowest >= 0


def test_throttled_requests_are_retried_after_the_bucket_refills(tmp_path: Path) -> None:
    with start_sandbox(faults=FaultPlan(rate_limit_every=3)) as server:
        run = run_tap(TapShopify, tap_config(server, tmp_path))
        throttled = server.app.state.shopify.bucket.throttled  # type: ignore[attr-defined]
        expected = expected_counts(server)
    assert throttled > 0
    assert run.error is None
    assert run.counts() == expected


def test_server_errors_timeouts_and_malformed_pages_are_retried(tmp_path: Path, fast_retries: None) -> None:
    faults = FaultPlan(outage_after=1, outage_requests=3, malformed_every=7, slow_every=11, slow_seconds=1.5)
    with start_sandbox(faults=faults) as server:
        run = run_tap(TapShopify, tap_config(server, tmp_path))
        expected = expected_counts(server)
    assert run.error is None
    assert run.counts() == expected


def test_exhausted_retries_go_to_the_dlq_while_other_streams_complete(tmp_path: Path, fast_retries: None) -> None:
    with start_sandbox(faults=FaultPlan(failing=("orders",))) as server:
        run = run_tap(TapShopify, tap_config(server, tmp_path))
        expected = expected_counts(server)

    assert isinstance(run.error, StreamsFailedError)
    assert "orders" not in run.counts()
    assert {k: v for k, v in run.counts().items()} == {k: v for k, v in expected.items() if k != "orders"}
    assert "orders" not in (run.last_state or {}).get("bookmarks", {})
    files = list((tmp_path / "dlq" / "acme" / "shopify" / "extraction_failed").rglob("*.ndjson.gz"))
    assert len(files) == 1
    text = gzip.decompress(files[0].read_bytes()).decode()
    letter = json.loads(text)
    assert letter["stream"] == "orders"
    assert letter["context"]["attempts"] == 4
    assert letter["context"]["status"] == 500
    assert letter["record"]["graphql_root_field"] == "orders"
    assert SECRET not in text
    assert SECRET not in run.stderr


def test_failed_stream_makes_the_command_exit_non_zero(tmp_path: Path) -> None:
    with start_sandbox(faults=FaultPlan(denied=("draftOrders",))) as server:
        run = run_tap_process("tap-shopify", tap_config(server, tmp_path), timeout=120)
    assert run.exit_code == 1
    assert "draft_orders: auth_failed" in run.stderr
    assert "ACCESS_DENIED" in run.stderr
    assert run.counts()["customers"] == RECORDS
    assert "draft_orders" not in run.counts()
    assert list((tmp_path / "dlq" / "acme" / "shopify" / "auth_failed").rglob("draft_orders_*.ndjson.gz"))


def test_rejected_query_fails_the_stream_without_retrying(sandbox: SandboxServer, tmp_path: Path) -> None:
    class BrokenCustomers(TapShopify):
        def discover_streams(self) -> list[Any]:
            streams = super().discover_streams()
            streams[0].selection = "id updatedAt email"  # not in the 2026-01 schema: Shopify rejects it
            return streams

    run = run_tap(BrokenCustomers, tap_config(sandbox, tmp_path))
    assert isinstance(run.error, StreamsFailedError)
    assert "Field 'email' doesn't exist on type 'Customer'" in str(run.error)
    state = sandbox.app.state.shopify  # type: ignore[attr-defined]
    assert state.requests_seen - len(state.operations) == 1  # the rejected query was sent once, not retried


def test_malformed_api_version_fails_fast_naming_the_setting(sandbox: SandboxServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_version"):
        TapShopify(config={**tap_config(sandbox, tmp_path), "api_version": "2026-1"}, validate_config=True)


def test_wrong_access_token_is_an_auth_failure(sandbox: SandboxServer, tmp_path: Path) -> None:
    run = run_tap(TapShopify, {**tap_config(sandbox, tmp_path), "access_token": "shpat_wrong"})
    assert isinstance(run.error, StreamsFailedError)
    assert {failure.error_type.value for failure in run.error.failures} == {"auth_failed"}


# singer-sdk's standard tap tests, against a sandbox the class's fixtures start and stop.
def standard_sandbox() -> ASGIApp:
    options = SandboxOptions(records=8, credentials={"access_token": DEFAULT_ACCESS_TOKEN})
    return create_sandbox(options, bucket=CostBucket(**FAST_BUCKET))


def standard_config(url: str, _: Path) -> dict[str, Any]:
    return {
        "shop": "cdp-sandbox",
        "access_token": DEFAULT_ACCESS_TOKEN,
        "api_url": url,
        "metafields": ["customers", "products"],
    }


TestTapShopifyStandard = standard_tap_test_class(TapShopify, standard_sandbox, standard_config)


# -- backfills as bulk operations -----------------------------------------------------------------------------------


def bulk_config(server: SandboxServer, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return tap_config(server, tmp_path, bulk_operations=True, bulk_poll_interval_seconds=0.01, **extra)


def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda record: str(record["id"]))


def test_a_first_sync_runs_one_bulk_operation_per_stream_with_the_same_records_as_paging(tmp_path: Path) -> None:
    with start_sandbox() as server:
        state = server.app.state.shopify  # type: ignore[attr-defined]
        metafields = {"metafields": ["customers", "orders", "products"]}
        bulk = run_tap(TapShopify, bulk_config(server, tmp_path, **metafields))
        paged_queries_during_bulk = [op for op in state.operations if op["variables"].get("first")]
        paged = run_tap(TapShopify, tap_config(server, tmp_path, **metafields))
        expected = expected_counts(server)
    assert bulk.error is None
    assert len(state.bulk_operations) == len(expected)  # one per stream
    assert paged_queries_during_bulk == []  # no page was queried: the bulk results hold everything
    assert bulk.counts() == expected
    for stream in expected:
        assert by_id(bulk.records(stream)) == by_id(paged.records(stream)), stream  # nested connections included
        assert bulk.bookmark(stream) == paged.bookmark(stream)


def test_bulk_results_are_reassembled_whatever_the_order_of_their_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taps.shopify import sandbox as shopify_sandbox

    original = shopify_sandbox.bulk_jsonl

    def children_first(connection: dict[str, Any]) -> tuple[bytes, int, int]:
        """Ungrouped output, as groupObjects: false allows: every child line before any parent line."""
        result, objects, roots = original(connection)
        lines = result.splitlines(keepends=True)
        children = [line for line in lines if b'"__parentId"' in line]
        return b"".join(children + [line for line in lines if line not in children]), objects, roots

    monkeypatch.setattr(shopify_sandbox, "bulk_jsonl", children_first)
    with start_sandbox() as server:
        bulk = run_tap(TapShopify, bulk_config(server, tmp_path))
        paged = run_tap(TapShopify, tap_config(server, tmp_path))
    assert bulk.error is None
    for stream in paged.counts():
        assert by_id(bulk.records(stream)) == by_id(paged.records(stream)), stream


def test_small_increments_page_and_large_windows_run_in_bulk(tmp_path: Path) -> None:
    with start_sandbox() as server:
        state = server.app.state.shopify  # type: ignore[attr-defined]
        first = run_tap(TapShopify, bulk_config(server, tmp_path))
        assert first.error is None
        assert len(state.bulk_operations) == 5
        changed = state.update_customer({"id": state.shop.customers[3]["id"], "note": "VIP"})["customer"]

        recent = datetime.now(UTC) - timedelta(days=1)
        week_old = {"bookmarks": {"customers": {"replication_key": "updatedAt", "replication_key_value": iso(recent)}}}
        config = bulk_config(server, tmp_path, bulk_threshold_days=7)
        increment = run_tap(TapShopify, {**config, "metafields": []}, state=week_old)
        assert increment.error is None
        assert [record["id"] for record in increment.records("customers")] == [changed["id"]]
        new_operations = state.bulk_operations[5:]
        assert len(new_operations) == 4  # the other streams start with no bookmark: bulk; customers paged
        assert all("customers" not in operation.query for operation in new_operations)

        old = datetime.now(UTC) - timedelta(days=30)
        month_old = {"bookmarks": {"customers": {"replication_key": "updatedAt", "replication_key_value": iso(old)}}}
        run_tap(TapShopify, config, state=month_old)
        assert any("customers" in operation.query for operation in state.bulk_operations[9:])


def test_a_busy_bulk_slot_is_waited_for_then_the_stream_goes_to_the_dlq(tmp_path: Path) -> None:
    with start_sandbox(faults=FaultPlan(bulk_polls_in_progress=1000)) as server:
        # Another client of the same app started a bulk query that keeps running.
        url = f"{server.url}/admin/api/2026-01/graphql.json"
        query = "{ orders { edges { node { id } } } }"
        mutation = f'mutation {{ bulkOperationRunQuery(query: "{query}") {{ userErrors {{ message }} }} }}'
        requests.post(url, json={"query": mutation}, headers={"X-Shopify-Access-Token": SECRET}, timeout=10)
        run = run_tap(TapShopify, bulk_config(server, tmp_path, bulk_timeout_seconds=0.3))
    assert isinstance(run.error, StreamsFailedError)
    assert {failure.stream for failure in run.error.failures} == set(expected_counts(server))
    assert "already in progress" in str(run.error)
    assert run.records() == []


def test_a_failed_bulk_operation_goes_to_the_dlq_while_other_streams_complete(tmp_path: Path) -> None:
    with start_sandbox(faults=FaultPlan(denied=("draftOrders",))) as server:
        run = run_tap(TapShopify, bulk_config(server, tmp_path))
        expected = expected_counts(server)
    assert isinstance(run.error, StreamsFailedError)
    [failure] = run.error.failures
    assert failure.stream == "draft_orders"
    assert failure.error_type.value == "auth_failed"
    assert "ACCESS_DENIED" in failure.message
    assert run.counts() == {stream: count for stream, count in expected.items() if stream != "draft_orders"}
    assert "draft_orders" not in (run.last_state or {}).get("bookmarks", {})
