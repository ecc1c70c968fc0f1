"""The transform runner on real Spark over raw batches written by the real target: incremental runs equal a full
refresh, a re-run changes nothing, rejected rows reach the DLQ with counts that conserve, an upstream change re-runs
customer_metrics, a crash before the commit changes nothing, two runs on one tenant are refused, and S3 zones work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plugins.cli.app import main
from plugins.core.storage import ObjectStore
from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.commit import live_data_files, processed_raw_files
from plugins.transforms.runner import INPUT_SNAPSHOTS_PROPERTY, RunSummary, TableSummary, run_transforms
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_table
from tests.test_transforms_builtins import WEBHOOK_EVENT, RawZone, shopify_order, stripe_charge, tap_schema

RAW_TABLES = ("orders", "products", "events")
ALL_TABLES = (*RAW_TABLES, "customer_metrics")
# customer_metrics is as of the run: its computed_at differs between two runs by design.
AS_OF_COLUMNS = {"computed_at"}


def stripe_event(event_id: str, created: int, customer: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "charge.succeeded",
        "created": created,
        "data": {"object": {"id": f"ch_{event_id}", "object": "charge", "customer": customer}},
    }


def webhook_event(event_id: str, received: str) -> dict[str, Any]:
    return {
        "_webhook_event_id": event_id,
        "_webhook_topic": "charge.succeeded",
        "_webhook_received_at": received,
        "_webhook_log_position": "1",
        "id": event_id,
    }


def land_step(zone: RawZone, step: int) -> None:
    """Three landings: versions of one order arriving out of order, a charge re-extracted with a refund, an event
    both listed by the API and delivered by webhook (in either order), a rejected charge, products."""
    orders_schema, charges_schema = tap_schema("shopify", "orders"), tap_schema("stripe", "charges")
    if step == 1:
        zone.land("shopify", "orders", orders_schema, [shopify_order(1, "2026-01-05T10:00:00Z")])
        zone.land(
            "stripe",
            "charges",
            charges_schema,
            [stripe_charge("ch_usd", 1999, "usd"), stripe_charge("ch_jpy", 5000, "jpy")],
        )
        zone.land("stripe", "events", tap_schema("stripe", "events"), [stripe_event("evt_1", 1767323045, "cus_1")])
        zone.land(
            "stripe",
            "webhook_events",
            WEBHOOK_EVENT,
            [webhook_event("evt_2", "2026-01-03T00:00:00Z")],
            key="_webhook_event_id",
        )
        zone.land(
            "stripe",
            "products",
            tap_schema("stripe", "products"),
            [{"id": "prod_1", "object": "product", "name": "Pro", "active": True, "created": 1767323045}],
        )
    elif step == 2:
        zone.land(
            "shopify",
            "orders",
            orders_schema,
            [
                shopify_order(1, "2026-01-06T10:00:00Z", displayFinancialStatus="REFUNDED"),
                shopify_order(2, "2026-01-07T10:00:00Z", email="not-an-email", customer=None),
            ],
        )
        # A negative amount breaks the orders' range rule: the DLQ gets it.
        zone.land("stripe", "charges", charges_schema, [stripe_charge("ch_bad", -5, "usd")])
        zone.land(
            "stripe",
            "webhook_events",
            WEBHOOK_EVENT,
            [webhook_event("evt_1", "2026-01-02T03:04:06Z")],
            key="_webhook_event_id",
        )
    else:
        # A late, older version of order 1 must not win; ch_usd re-extracted with a refund wins its tie by raw file.
        zone.land(
            "shopify",
            "orders",
            orders_schema,
            [shopify_order(1, "2026-01-04T10:00:00Z", displayFinancialStatus="PENDING")],
        )
        zone.land("stripe", "charges", charges_schema, [stripe_charge("ch_usd", 1999, "usd", amount_refunded=500)])
        zone.land("stripe", "events", tap_schema("stripe", "events"), [stripe_event("evt_2", 1767409445, "cus_1")])
        zone.land("stripe", "prices", tap_schema("stripe", "prices"),
                  [{"id": "price_1", "object": "price", "product": "prod_1", "currency": "usd", "unit_amount": 2900,
                    "active": True, "created": 1767323045}])  # fmt: skip


def run(zone: RawZone, processed: Path | str, **options: Any) -> RunSummary:
    base = zone.base
    return run_transforms(
        tenants=["acme"],
        raw_url=f"{base}/raw",
        dlq_url=f"{base}/dlq",
        registry_url=f"{base}/registry",
        processed_url=str(processed),
        **options,
    )


def by_table(summary: RunSummary) -> dict[str, TableSummary]:
    return {table.table: table for table in summary.tables}


def table_rows(spark: Any, processed: Path | str, name: str) -> list[dict[str, Any]]:
    table = load_table(ProcessedZone.resolve(str(processed)).open(), "acme", name)
    frame = read_table(spark, table).drop(DATA_FILE_COLUMN, *AS_OF_COLUMNS)
    rows = [row.asDict(recursive=True) for row in frame.collect()]
    return sorted(rows, key=lambda row: json.dumps(row, default=str, sort_keys=True))


def assert_conserved(summary: RunSummary) -> None:
    for table in summary.tables:
        assert table.rows_in == table.rows_out + table.rejected + table.erased + table.merged, table


@pytest.fixture(scope="module")
def stepwise(spark, tmp_path_factory) -> dict[str, Any]:
    """The raw zone landed in three steps with an incremental run after each; then a full refresh elsewhere."""
    zone = RawZone(spark, tmp_path_factory.mktemp("runner"))
    processed = Path(zone.base) / "processed"
    runs = []
    for step in (1, 2, 3):
        land_step(zone, step)
        runs.append(run(zone, processed))
    rerun = run(zone, processed)
    historic = Path(zone.base) / "historic"
    full = run(zone, historic, full_refresh=True)
    return {"zone": zone, "processed": processed, "historic": historic, "runs": runs, "rerun": rerun, "full": full}


def test_incremental_runs_give_the_same_tables_as_a_full_refresh_row_for_row(spark, stepwise) -> None:
    runs, full = stepwise["runs"], stepwise["full"]
    assert all(run.ok for run in [*runs, full])
    for name in ALL_TABLES:
        assert table_rows(spark, stepwise["processed"], name) == table_rows(spark, stepwise["historic"], name), name

    orders = {row["order_id"]: row for row in table_rows(spark, stepwise["processed"], "orders")}
    assert orders["shopify:order:gid://shopify/Order/1"]["status"] == "REFUNDED"  # The late older version lost.
    assert orders["stripe:charge:ch_usd"]["refunded_amount"] == 5  # The tie went to the later raw file.
    assert "stripe:charge:ch_bad" not in orders
    events = {row["event_id"]: row for row in table_rows(spark, stepwise["processed"], "events")}
    assert events["stripe:evt_1"]["channel"] == "api"  # The webhook copy, landed later, did not replace it.
    assert events["stripe:evt_2"]["channel"] == "api"  # The API copy, landed later, replaced the webhook's.
    # The lineage column stays in the table: each row names the raw file it came from.
    assert all(row["_cdp_source_file"].startswith("acme/") for row in orders.values())

    second = by_table(runs[1])
    assert second["orders"].mode == "incremental"
    assert second["products"].status == "up to date"  # Nothing new landed for products in step 2.
    assert second["customer_metrics"].mode == "complete"
    assert by_table(full)["orders"].mode == "full-refresh"


def test_a_rerun_with_nothing_new_commits_nothing(spark, stepwise) -> None:
    rerun = by_table(stepwise["rerun"])
    last = by_table(stepwise["runs"][-1])
    assert {name: table.status for name, table in rerun.items()} == dict.fromkeys(ALL_TABLES, "up to date")
    catalog = ProcessedZone.resolve(str(stepwise["processed"])).open()
    for name in ALL_TABLES:
        snapshot = load_table(catalog, "acme", name).current_snapshot()
        assert snapshot is not None
        assert rerun[name].snapshot_id == snapshot.snapshot_id
        if last[name].status == "committed":
            assert last[name].snapshot_id == snapshot.snapshot_id


def test_counts_conserve_and_rejected_rows_reach_the_dlq(spark, stepwise, capsys) -> None:
    for summary in [*stepwise["runs"], stepwise["full"]]:
        assert_conserved(summary)
    second = by_table(stepwise["runs"][1])["orders"]
    assert (second.rows_in, second.rows_out, second.rejected, second.merged) == (3, 2, 1, 0)
    assert second.quality.rejected_by_rule == {"range [0, ]": 1}
    assert second.quality.nulled == {"email": {"invalid email": 1}}
    third = by_table(stepwise["runs"][2])["orders"]
    assert (third.rows_in, third.rows_out, third.merged) == (2, 1, 1)  # The late order 1 lost to the table's.

    dlq = f"{stepwise['zone'].base}/dlq"
    capsys.readouterr()
    assert main(["dlq", "list", "--dlq-url", dlq, "--error-type", "transform_rejected", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["batches"]
    assert {(b["provider"], b["stream"]) for b in listed} == {("stripe", "orders")}
    assert sum(b["records"] for b in listed) == 2  # Once by the incremental run, once by the full refresh.
    assert main(["dlq", "show", listed[0]["key"], "--dlq-url", dlq, "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["example_record"]["order_id"] == "stripe:charge:ch_bad"
    assert main(["dlq", "stats", "--dlq-url", dlq, "--raw-url", f"{stepwise['zone'].base}/raw", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {(r["error_type"], r["records"]) for r in stats["by_stream"]} >= {("transform_rejected", 2)}


def test_the_processed_files_and_input_snapshots_commit_with_the_output(spark, stepwise) -> None:
    catalog = ProcessedZone.resolve(str(stepwise["processed"])).open()
    orders = load_table(catalog, "acme", "orders")
    landed = {
        info.key
        for info in ObjectStore(f"{stepwise['zone'].base}/raw").list("acme")
        if "/orders/" in info.key or "/charges/" in info.key
    }
    assert processed_raw_files(orders) >= landed
    metrics = load_table(catalog, "acme", "customer_metrics")
    summary = metrics.current_snapshot().summary.additional_properties
    recorded = json.loads(summary[INPUT_SNAPSHOTS_PROPERTY])
    assert recorded == {
        "orders": load_table(catalog, "acme", "orders").current_snapshot().snapshot_id,
        "events": load_table(catalog, "acme", "events").current_snapshot().snapshot_id,
    }
    assert live_data_files(metrics)
