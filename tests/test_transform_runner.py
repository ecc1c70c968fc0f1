"""The transform runner on real Spark over raw batches written by the real target: incremental runs equal a full
refresh, a re-run changes nothing, rejected rows reach the DLQ with counts that conserve, an upstream change re-runs
customer_metrics, a crash before the commit changes nothing, two runs on one tenant are refused, and S3 zones work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugins.cli.app import main
from plugins.core.errors import ConfigError
from plugins.core.leases import Lease, LeaseManager
from plugins.core.storage import ObjectStore
from plugins.descriptors import RawInput, TableInput, TransformDescriptor
from plugins.meltano.project import MeltanoError, run_meltano
from plugins.transforms import commit as commit_module
from plugins.transforms import frames
from plugins.transforms import runner as runner_module
from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.commit import live_data_files, processed_raw_files
from plugins.transforms.erasure import Tombstone, add_tombstones, erasure_table
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN
from plugins.transforms.run import TransformOutput, TransformRun
from plugins.transforms.runner import (
    INPUT_SNAPSHOTS_PROPERTY,
    LEASE_PREFIX,
    RUN_ID_PROPERTY,
    RunSummary,
    TableSummary,
    TransformBusyError,
    recorded_property,
    run_transforms,
)
from plugins.transforms.settings import TenantSettings
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_data_files, read_table
from tests.conftest import REPO_ROOT
from tests.test_transforms_builtins import WEBHOOK_EVENT, RawZone, shopify_order, stripe_charge, tap_schema

RAW_TABLES = ("orders", "products", "events")
ALL_TABLES = (*RAW_TABLES, "customer_metrics", "customer_events")
# customer_metrics is as of the run: its computed_at differs between two runs by design.
AS_OF_COLUMNS = {"computed_at"}
ERASED_CUSTOMER = "cus_erased"
# Several Spark runs in one test (about a minute and a half on two idle cores): more than the suite's 300 s default
# leaves room for a loaded machine.
SPARK_RUNS_TIMEOUT = 900
pytestmark = pytest.mark.timeout(SPARK_RUNS_TIMEOUT)


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
    """Two landings, each covering what an incremental run must get right: versions of a key arriving in either order
    across runs (a newer one replaces the table's row, a late older one loses to it), a tie on ``updated_at`` broken
    by the later raw file, an event listed by the API and delivered by webhook in either order, a rejected charge,
    an erased customer's charges in both steps, and products landing only in the first."""
    orders_schema, charges_schema = tap_schema("shopify", "orders"), tap_schema("stripe", "charges")
    if step == 1:
        zone.land(
            "shopify",
            "orders",
            orders_schema,
            [
                shopify_order(1, "2026-01-06T10:00:00Z", displayFinancialStatus="REFUNDED"),
                shopify_order(2, "2026-01-07T10:00:00Z", email="not-an-email", customer=None),
            ],
        )
        zone.land(
            "stripe",
            "charges",
            charges_schema,
            [
                stripe_charge("ch_usd", 1999, "usd"),
                stripe_charge("ch_jpy", 5000, "jpy"),
                stripe_charge("ch_erased", 1000, "usd", customer=ERASED_CUSTOMER),
            ],
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
        zone.land("stripe", "prices", tap_schema("stripe", "prices"),
                  [{"id": "price_1", "object": "price", "product": "prod_1", "currency": "usd", "unit_amount": 2900,
                    "active": True, "created": 1767323045}])  # fmt: skip
    else:
        zone.land(
            "shopify",
            "orders",
            orders_schema,
            [
                # A late, older version of order 1: it must not replace the table's newer one.
                shopify_order(1, "2026-01-05T10:00:00Z", displayFinancialStatus="PAID"),
                # A newer version of order 2: it replaces the table's.
                shopify_order(2, "2026-01-08T10:00:00Z", email="not-an-email", customer=None,
                              displayFinancialStatus="PARTIALLY_REFUNDED"),
            ],
        )  # fmt: skip
        zone.land(
            "stripe",
            "charges",
            charges_schema,
            [
                stripe_charge("ch_usd", 1999, "usd", amount_refunded=500),  # Same updated_at: the later file wins.
                stripe_charge("ch_bad", -5, "usd"),  # A negative amount breaks the orders' range rule: the DLQ.
                stripe_charge("ch_erased_2", 300, "usd", customer=ERASED_CUSTOMER),
            ],
        )
        zone.land(
            "stripe",
            "webhook_events",
            WEBHOOK_EVENT,
            [webhook_event("evt_1", "2026-01-02T03:04:06Z")],
            key="_webhook_event_id",
        )
        zone.land("stripe", "events", tap_schema("stripe", "events"), [stripe_event("evt_2", 1767409445, "cus_1")])


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
    """The raw zone landed in two steps with an incremental run after each; then a full refresh elsewhere."""
    zone = RawZone(spark, tmp_path_factory.mktemp("runner"))
    processed, historic = Path(zone.base) / "processed", Path(zone.base) / "historic"
    for folder in (processed, historic):  # A person erased before anything landed: no run may bring them in.
        tombstones = erasure_table(ProcessedZone.resolve(str(folder)).open(), "acme")
        add_tombstones(spark, tombstones, [Tombstone.provider_id("stripe_customer", ERASED_CUSTOMER)])
    runs = []
    for step in (1, 2):
        land_step(zone, step)
        runs.append(run(zone, processed))
    rerun = run(zone, processed)
    full = run(zone, historic, full_refresh=True)
    return {"zone": zone, "processed": processed, "historic": historic, "runs": runs, "rerun": rerun, "full": full}


def test_incremental_runs_give_the_same_tables_as_a_full_refresh_row_for_row(spark, stepwise) -> None:
    runs, full = stepwise["runs"], stepwise["full"]
    assert all(run.ok for run in [*runs, full])
    for name in ALL_TABLES:
        assert table_rows(spark, stepwise["processed"], name) == table_rows(spark, stepwise["historic"], name), name

    orders = {row["order_id"]: row for row in table_rows(spark, stepwise["processed"], "orders")}
    assert set(orders) == {
        "shopify:order:gid://shopify/Order/1",
        "shopify:order:gid://shopify/Order/2",
        "stripe:charge:ch_usd",
        "stripe:charge:ch_jpy",
    }  # ch_bad was rejected; the erased customer's ch_erased and ch_erased_2 never came in.
    assert orders["shopify:order:gid://shopify/Order/1"]["status"] == "REFUNDED"  # The late older version lost.
    assert orders["shopify:order:gid://shopify/Order/2"]["status"] == "PARTIALLY_REFUNDED"  # The newer one won.
    assert orders["stripe:charge:ch_usd"]["refunded_amount"] == 5  # The tie went to the later raw file.
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
    assert {name: rerun[name].status for name in ALL_TABLES} == dict.fromkeys(ALL_TABLES, "up to date")
    # No person-records landed here; customers ran once on the events' identifiers and is up to date too.
    assert (rerun["customer_records"].status, rerun["customers"].status) == ("no input", "up to date")
    catalog = ProcessedZone.resolve(str(stepwise["processed"])).open()
    for name in ALL_TABLES:
        snapshot = load_table(catalog, "acme", name).current_snapshot()
        assert snapshot is not None
        assert rerun[name].snapshot_id == snapshot.snapshot_id
        if last[name].status == "committed":
            assert last[name].snapshot_id == snapshot.snapshot_id


def test_a_run_with_nothing_new_starts_no_spark(stepwise, monkeypatch) -> None:
    # A nightly schedule that finds nothing new must not pay for a JVM (the tenant has tombstones, read only by a
    # table that has something to write).
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a run with nothing to do asked for a SparkSession")

    monkeypatch.setattr("plugins.transforms.spark.spark_session", refuse)
    rerun = by_table(run(stepwise["zone"], stepwise["processed"]))
    assert {name: rerun[name].status for name in ALL_TABLES} == dict.fromkeys(ALL_TABLES, "up to date")


def test_a_spark_that_cannot_start_stops_the_run_with_one_error_and_frees_the_tenant(tmp_path, monkeypatch) -> None:
    from plugins.transforms.spark import SparkSessionError

    zone = RawZone(None, tmp_path)  # Landing needs no Spark, and this test must not start one.
    land_step(zone, 1)
    starts = []

    def broken(*args: Any, **kwargs: Any) -> None:
        starts.append(args)
        raise SparkSessionError("Spark did not start on 'local[*]' with Java 17")

    monkeypatch.setattr("plugins.transforms.spark.spark_session", broken)
    for _ in range(2):  # The second run is not refused as busy: the first freed the tenant's lease.
        with pytest.raises(SparkSessionError, match="did not start"):
            run(zone, tmp_path / "processed")
    assert len(starts) == 2  # Once per run, not once per table.


def test_counts_conserve_and_rejected_rows_reach_the_dlq(spark, stepwise, capsys) -> None:
    for summary in [*stepwise["runs"], stepwise["full"]]:
        assert_conserved(summary)
    first = by_table(stepwise["runs"][0])["orders"]
    assert (first.rows_in, first.rows_out, first.erased, first.rejected, first.merged) == (5, 4, 1, 0, 0)
    assert first.quality.nulled == {"email": {"invalid email": 1}}  # Order 2's "not-an-email".
    second = by_table(stepwise["runs"][1])["orders"]
    # In: order 1 (late, loses to the table's: merged), order 2, ch_usd, ch_bad (rejected), ch_erased_2 (erased).
    assert (second.rows_in, second.rows_out, second.rejected, second.erased, second.merged) == (5, 2, 1, 1, 1)
    assert second.quality.rejected_by_rule == {"range [0, ]": 1}

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
        "customers": load_table(catalog, "acme", "customers").current_snapshot().snapshot_id,
    }
    assert live_data_files(metrics)


CRASHING_RUN = """
import sys
import plugins.transforms.runner as runner
from plugins.transforms.spark import spark_session

real_commit = runner.commit_files


def stop_before_commit(*args, **kwargs):
    print("written", flush=True)
    sys.stdin.readline()  # Killed here: the data files and the DLQ batches exist, the commit never happens.
    return real_commit(*args, **kwargs)


runner.commit_files = stop_before_commit
spark_session("local[1]", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
base, processed = sys.argv[1], sys.argv[2]
runner.run_transforms(
    tenants=["acme"], tables=["orders"], raw_url=f"{base}/raw", dlq_url=f"{base}/dlq",
    registry_url=f"{base}/registry", processed_url=processed,
)
"""


def test_a_crash_before_the_commit_changes_nothing_and_a_second_run_meanwhile_is_refused(spark, tmp_path) -> None:
    zone = RawZone(spark, tmp_path)
    processed = tmp_path / "processed"
    land_step(zone, 1)
    first = by_table(run(zone, processed, tables=["orders"]))["orders"]
    before = table_rows(spark, processed, "orders")
    land_step(zone, 2)

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    crashing = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, zone.base, str(processed)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert crashing.stdout is not None
        line = crashing.stdout.readline()  # Blocks until the files are written (or the run dies).
        assert line.startswith("written"), f"the run ended before writing: {crashing.wait()}"
        # The blocked run holds the tenant's lease: a second run at the same time is refused in one line.
        with pytest.raises(
            TransformBusyError,
            match=r"^tenant acme is held by run \w+ .*: another transform run is working on it; wait",
        ):
            run(zone, processed, tables=["orders"])
        os.killpg(crashing.pid, signal.SIGKILL)
        crashing.wait(timeout=60)
    finally:
        if crashing.poll() is None:
            os.killpg(crashing.pid, signal.SIGKILL)

    table = load_table(ProcessedZone.resolve(str(processed)).open(), "acme", "orders")
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    assert table_rows(spark, processed, "orders") == before
    orphans = [p for p in processed.rglob("*.parquet") if p.as_uri() not in live_data_files(table)]
    assert orphans  # The killed run's files exist; no snapshot references them.

    # The killed run's lease is gone with its process: the next run takes it and completes, with no duplicates.
    recovered = by_table(run(zone, processed, tables=["orders"]))["orders"]
    # This zone has no tombstones: ch_erased_2 is an ordinary charge here.
    assert (recovered.status, recovered.rows_in, recovered.rows_out, recovered.rejected, recovered.merged) == (
        "committed",
        5,
        3,
        1,
        1,
    )
    ids = [row["order_id"] for row in table_rows(spark, processed, "orders")]
    assert len(ids) == len(set(ids)) == 6

    # customer_metrics has no raw input: a change of the orders table alone re-runs it, once.
    metrics = by_table(run(zone, processed, tables=["customer_metrics"]))["customer_metrics"]
    assert (metrics.status, metrics.mode) == ("committed", "complete")
    assert by_table(run(zone, processed, tables=["customer_metrics"]))["customer_metrics"].status == "up to date"
    run(zone, processed, tables=["orders"])  # Nothing new: orders stay as they are, so metrics stay up to date.
    assert by_table(run(zone, processed, tables=["customer_metrics"]))["customer_metrics"].status == "up to date"


def test_one_run_over_s3_raw_and_processed_zones(spark, s3_url, tmp_path) -> None:
    zone = RawZone(spark, s3_url)  # type: ignore[arg-type]
    processed = f"{s3_url}/processed"
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    land_step(zone, 1)
    run(zone, processed, tables=["orders"], catalog_url=catalog)
    land_step(zone, 2)
    second = by_table(run(zone, processed, tables=["orders"], catalog_url=catalog))["orders"]

    assert (second.status, second.mode, second.rows_out, second.rejected) == ("committed", "incremental", 3, 1)
    table = load_table(ProcessedZone.resolve(processed, catalog).open(), "acme", "orders")
    assert all(path.startswith(f"{s3_url}/processed/acme/orders/data/") for path in live_data_files(table))
    rows = {row["order_id"]: row for row in read_table(spark, table).collect()}
    assert set(rows) == {
        "shopify:order:gid://shopify/Order/1",
        "shopify:order:gid://shopify/Order/2",
        "stripe:charge:ch_usd",
        "stripe:charge:ch_jpy",
        "stripe:charge:ch_erased",
        "stripe:charge:ch_erased_2",
    }
    assert rows["shopify:order:gid://shopify/Order/1"]["status"] == "REFUNDED"
    report = ObjectStore(processed).list("_reports/acme")
    assert len(report) == 2  # One quality report per run.


@pytest.mark.meltano
def test_meltano_runs_the_transforms_as_the_cdp_utility_with_its_settings(tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / "meltano.yml", project / "meltano.yml")
    # Where the dev environment's target-s3raw lands. This test only lands (Spark runs in the cdp process Meltano
    # starts), so it stays out of the shared session's group and runs beside it.
    zone = RawZone(None, project / "data")
    # Products only, to keep the run short: the other transforms find no input and commit nothing.
    zone.land("stripe", "products", tap_schema("stripe", "products"), [{"id": "prod_1", "object": "product",
              "name": "Pro", "active": True, "created": 1767323045}])  # fmt: skip
    env = {"CDP_SPARK_MASTER": "local[1]"}

    # An object setting reaches cdp as CDP_TENANT_SETTINGS, checked before Spark starts.
    settings = ["config", "set", "cdp", "tenant_settings"]
    run_meltano([*settings, '{"acme": {"default_region": "ZZ"}}'], project_root=project, capture=True, timeout=120)
    with pytest.raises(MeltanoError, match="'ZZ' is not an ISO 3166-1 alpha-2 country code"):
        run_meltano(["run", "cdp:transform"], project_root=project, extra_env=env, capture=True, timeout=120)

    run_meltano([*settings, '{"acme": {"default_region": "GB"}}'], project_root=project, capture=True, timeout=120)
    run_meltano(["run", "cdp:transform"], project_root=project, extra_env=env, capture=True, timeout=800)

    catalog = ProcessedZone.resolve(str(project / "data" / "processed")).open()
    products = load_table(catalog, "acme", "products").scan().to_arrow()
    assert products.column("product_id").to_pylist() == ["stripe:product:prod_1"]
    assert not catalog.table_exists(("acme", "orders"))  # No input yet: nothing created.
    reports = ObjectStore(str(project / "data" / "processed")).list("_reports/acme")
    (report,) = [json.loads(ObjectStore(str(project / "data" / "processed")).read_bytes(r.key)) for r in reports]
    assert {t["table"]: t["status"] for t in report["tables"]} == {
        "events": "no input",
        "orders": "no input",
        "products": "committed",
        "customer_metrics": "no input",
        "customer_events": "no input",
        "customer_records": "no input",
        "customers": "no input",
    }


def test_the_cli_prints_the_summary_lists_the_tables_and_refuses_a_busy_tenant(spark, stepwise, capsys) -> None:
    base = stepwise["zone"].base
    zones = [
        "--raw-url",
        f"{base}/raw",
        "--registry-url",
        f"{base}/registry",
        "--processed-url",
        str(stepwise["processed"]),
    ]
    capsys.readouterr()
    assert main(["transform", "run", "--tenant", "acme", *zones, "--dlq-url", f"{base}/dlq", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert {(t["table"], t["status"], t["skipped"]) for t in summary["tables"]} == {
        *((name, "up to date", True) for name in ALL_TABLES),
        ("customer_records", "no input", True),
        ("customers", "up to date", True),
    }
    assert summary["reports"]["acme"].endswith(f"_reports/acme/{summary['run_id']}.json")

    assert main(["transform", "list", "--tenant", "acme", *zones, "--json"]) == 0
    listed = {row["output"]: row for row in json.loads(capsys.readouterr().out)["transforms"]}
    assert list(listed).index("customer_metrics") > list(listed).index("orders")  # Run order: after what it reads.
    assert list(listed).index("customers") > list(listed).index("customer_records")
    assert listed["orders"]["key"] == ["order_id"]
    assert listed["orders"]["pending_raw_files"] == 0
    assert listed["customer_metrics"]["inputs"] == ["table:orders", "table:events", "table:customers"]
    assert listed["customer_metrics"]["changed_inputs"] == []

    processed = ObjectStore(ProcessedZone.resolve(str(stepwise["processed"])).warehouse)
    holder = LeaseManager(processed, LEASE_PREFIX, run_id="other-run").acquire("tenant acme")
    assert isinstance(holder, Lease)
    try:
        assert main(["transform", "run", "--tenant", "acme", *zones, "--dlq-url", f"{base}/dlq"]) == 1
        error = capsys.readouterr().err
        assert "tenant acme is held by run other-run" in error
        assert len(error.strip().splitlines()) == 1
    finally:
        holder.release()


def charge_rows(charges: Any, *extra: str) -> Any:
    from pyspark.sql import functions as F

    return charges.select(F.col("id").alias("charge_id"), "amount", *extra, F.col(SOURCE_FILE_COLUMN))


def charges_v1(*, charges: Any) -> Any:
    return charge_rows(charges)


def charges_v2(*, charges: Any, run: TransformRun) -> TransformOutput:
    """A new nullable column, a deleted key, a counter for the quality report: the function asked for ``run``."""
    run.counters["charges.with_currency"] = charges.where("currency is not null").count()
    gone = run.spark.createDataFrame([("ch_gone",)], "charge_id string")
    return TransformOutput(rows=charge_rows(charges, "currency"), deleted_keys=gone)


def charges_v3(*, charges: Any) -> Any:
    return charge_rows(charges, "currency").withColumn("amount", charges["amount"].cast("string"))


def charges_counting(*, charges: Any, run: TransformRun) -> TransformOutput:
    """Its own bookkeeping in its snapshots: how many charges it has seen, read back by the next run."""
    before = run.recorded("charges-seen")
    seen = int(before or 0) + charges.count()
    return TransformOutput(rows=charge_rows(charges), properties={"charges-seen": str(seen), "before": str(before)})


def charges_claiming(*, charges: Any) -> TransformOutput:
    """Names that Iceberg's summary and the framework use for their own figures."""
    names = {"added-records": "7", "operation": "mine", "cdp.run-id": "mine"}
    return TransformOutput(rows=charge_rows(charges), properties=names)


def charges_untyped(*, charges: Any) -> TransformOutput:
    return TransformOutput(rows=charge_rows(charges), properties={"seen": 5})  # type: ignore[dict-item]


def charges_transform(version: str) -> TransformDescriptor:
    return TransformDescriptor(
        name="charge_view",
        inputs=[RawInput("stripe", "charges")],
        output="charge_view",
        key=["charge_id"],
        function=f"tests.test_transform_runner:charges_{version}",
    )


def test_a_new_column_evolves_the_table_another_change_needs_a_full_refresh_and_deleted_keys_go(
    spark, tmp_path
) -> None:
    zone = RawZone(spark, tmp_path)
    processed = tmp_path / "processed"
    schema = tap_schema("stripe", "charges")
    zone.land("stripe", "charges", schema, [stripe_charge("ch_1", 100, "usd"), stripe_charge("ch_gone", 200, "usd")])
    assert by_table(run(zone, processed, transforms=[charges_transform("v1")]))["charge_view"].rows_out == 2

    zone.land("stripe", "charges", schema, [stripe_charge("ch_2", 300, "eur")])
    second = by_table(run(zone, processed, transforms=[charges_transform("v2")]))["charge_view"]
    assert (second.status, second.rows_out, second.deleted) == ("committed", 1, 1)
    assert second.quality.counters == {"charges.with_currency": 1}
    rows = {row["charge_id"]: row for row in table_rows(spark, processed, "charge_view")}
    assert {key: row["currency"] for key, row in rows.items()} == {"ch_1": None, "ch_2": "eur"}
    table = load_table(ProcessedZone.resolve(str(processed)).open(), "acme", "charge_view")
    snapshot = table.current_snapshot().snapshot_id

    zone.land("stripe", "charges", schema, [stripe_charge("ch_3", 400, "usd")])
    failed = run(zone, processed, transforms=[charges_transform("v3")])
    (result,) = failed.tables
    assert not failed.ok
    assert result.status == "failed"
    assert result.error == (
        "table acme.charge_view: column amount changed type from bigint to string; run 'cdp transform run "
        "--full-refresh --tenant acme --table charge_view' to rebuild it with the new schema"
    )
    table = load_table(ProcessedZone.resolve(str(processed)).open(), "acme", "charge_view")
    assert table.current_snapshot().snapshot_id == snapshot  # Nothing committed.

    rebuilt = by_table(run(zone, processed, transforms=[charges_transform("v3")], full_refresh=True))["charge_view"]
    assert (rebuilt.status, rebuilt.rows_out) == ("committed", 4)
    assert {row["charge_id"]: row["amount"] for row in table_rows(spark, processed, "charge_view")} == {
        "ch_1": "100",
        "ch_gone": "200",
        "ch_2": "300",
        "ch_3": "400",
    }


def test_a_transform_records_its_own_properties_apart_and_reads_them_back_through_a_compaction(spark, tmp_path) -> None:
    from plugins.transforms.maintenance import compact

    zone, processed = RawZone(spark, tmp_path), tmp_path / "processed"
    schema = tap_schema("stripe", "charges")
    counting = [charges_transform("counting")]

    def table() -> Any:
        return load_table(ProcessedZone.resolve(str(processed)).open(), "acme", "charge_view")

    def recorded() -> tuple[str | None, str | None]:
        return recorded_property(table(), "charges-seen"), recorded_property(table(), "before")

    zone.land("stripe", "charges", schema, [stripe_charge("ch_1", 100, "usd"), stripe_charge("ch_2", 200, "usd")])
    run(zone, processed, transforms=counting)
    assert recorded() == ("2", "None")
    zone.land("stripe", "charges", schema, [stripe_charge("ch_3", 300, "usd")])
    run(zone, processed, transforms=counting)
    assert recorded() == ("3", "2")
    assert compact(spark, table()).snapshot_id is not None  # Two files into one: a snapshot without the property.
    zone.land("stripe", "charges", schema, [stripe_charge("ch_4", 400, "usd")])
    run(zone, processed, transforms=counting)
    assert recorded() == ("4", "3")
    snapshot = table().current_snapshot().snapshot_id

    zone.land("stripe", "charges", schema, [stripe_charge("ch_5", 500, "usd")])
    untyped = run(zone, processed, transforms=[charges_transform("untyped")])
    (result,) = untyped.tables
    assert result.status == "failed"
    assert result.error == "table acme.charge_view: snapshot properties are text; give a string name and value for seen"
    assert table().current_snapshot().snapshot_id == snapshot  # Nothing committed.

    claimed = by_table(run(zone, processed, transforms=[charges_transform("claiming")]))["charge_view"]

    summary = table().current_snapshot().summary
    assert (claimed.status, summary.operation.value, summary["added-records"]) == ("committed", "append", "1")
    assert summary[RUN_ID_PROPERTY] != "mine"
    assert [recorded_property(table(), name) for name in ("added-records", "operation", "cdp.run-id")] == [
        "7", "mine", "mine"
    ]  # fmt: skip


@pytest.mark.parametrize("broadcast_rows", [frames.MAX_BROADCAST_ROWS, 0], ids=["keys-broadcast", "rows-shuffled"])
def test_an_incremental_merge_replaces_newer_versions_deletes_keys_and_keeps_every_other_row(
    spark, tmp_path, monkeypatch, broadcast_rows
) -> None:
    """A few touched keys go to every task and only their rows are folded; past ``MAX_BROADCAST_ROWS`` every row of
    the rewritten files is shuffled and folded. Either way the same table and the same counts."""
    monkeypatch.setattr(frames, "MAX_BROADCAST_ROWS", broadcast_rows)
    zone = RawZone(spark, tmp_path)
    processed = tmp_path / "processed"
    schema = tap_schema("stripe", "charges")
    first = [stripe_charge(charge_id, amount, "usd") for charge_id, amount in (("ch_1", 100), ("ch_gone", 200))]
    zone.land("stripe", "charges", schema, [*first, stripe_charge("ch_kept", 50, "usd")])
    assert by_table(run(zone, processed, transforms=[charges_transform("v1")]))["charge_view"].rows_out == 3

    zone.land("stripe", "charges", schema, [stripe_charge("ch_1", 150, "usd"), stripe_charge("ch_2", 300, "eur")])
    second = by_table(run(zone, processed, transforms=[charges_transform("v2")]))["charge_view"]

    assert (second.rows_in, second.rows_out, second.merged, second.deleted) == (2, 2, 0, 1)
    rows = {row["charge_id"]: (row["amount"], row["currency"]) for row in table_rows(spark, processed, "charge_view")}
    # ch_1's later raw file won; ch_kept, which no row of this run touched, stays as it was (no currency yet).
    assert rows == {"ch_1": (150, "usd"), "ch_2": (300, "eur"), "ch_kept": (50, None)}
    assert second.mode == "incremental"


def test_a_merge_whose_copied_rows_miscount_commits_nothing(spark, tmp_path, monkeypatch) -> None:
    """The rows copied from the rewritten files are counted by Spark apart from the copy: a copy that drops a row it
    should keep fails the check before the commit."""
    import pyarrow as pa

    from plugins.transforms import runner

    zone = RawZone(spark, tmp_path)
    processed = tmp_path / "processed"
    schema = tap_schema("stripe", "charges")
    zone.land("stripe", "charges", schema, [stripe_charge("ch_1", 100, "usd"), stripe_charge("ch_kept", 50, "usd")])
    run(zone, processed, transforms=[charges_transform("v1")])
    before = load_table(ProcessedZone.resolve(str(processed), None).open(), "acme", "charge_view").current_snapshot()
    copy = runner.rewrite_keeping_rows

    def copy_dropping_one_more(spark_, table, replaced, written, dropped, **options):
        one_more = pa.table({"charge_id": pa.array(["ch_kept"], dropped.schema[0].type)})
        return copy(spark_, table, replaced, written, pa.concat_tables([dropped, one_more]), **options)

    monkeypatch.setattr(runner, "rewrite_keeping_rows", copy_dropping_one_more)
    zone.land("stripe", "charges", schema, [stripe_charge("ch_1", 150, "usd")])
    failed = by_table(run(zone, processed, transforms=[charges_transform("v1")]))["charge_view"]

    assert failed.status == "failed"
    assert "the written files hold 1 rows, the output 2; nothing committed" in (failed.error or "")
    after = load_table(ProcessedZone.resolve(str(processed), None).open(), "acme", "charge_view").current_snapshot()
    assert after.snapshot_id == before.snapshot_id


def test_settings_per_tenant_from_the_environment_and_meltanos_flattened_object(monkeypatch) -> None:
    monkeypatch.setenv("CDP_DEFAULT_REGION", "fr")
    monkeypatch.setenv("CDP_TENANT_SETTINGS", '{"acme": {"default_region": "gb"}}')
    settings = TenantSettings.resolve()
    assert settings.for_tenant("acme").default_region == "GB"
    assert settings.for_tenant("globex").default_region == "FR"
    # Meltano hands an object setting over flattened, with dotted keys.
    flattened = TenantSettings.resolve(default_region="US", tenant_settings='{"acme.default_region": "DE"}')
    assert (flattened.for_tenant("acme").default_region, flattened.for_tenant("x").default_region) == ("DE", "US")


@pytest.mark.parametrize(
    ("region", "tenants", "message"),
    [
        ("XX", None, "setting 'default_region': 'XX' is not an ISO 3166-1 alpha-2 country code"),
        (None, "[1", "setting 'CDP_TENANT_SETTINGS': is not JSON"),
        (None, '{"acme": {"region": "GB"}}', "tenant 'acme': unknown setting(s) region; known: default_region"),
        (None, '{"acme": {"default_region": "Narnia"}}', "acme.default_region': 'Narnia' is not an ISO 3166-1"),
        (None, '{"Acme": {}}', "'Acme' must be lower-case letters"),
    ],
)
def test_a_bad_setting_is_one_clear_line(region, tenants, message) -> None:
    with pytest.raises(ConfigError) as failure:
        TenantSettings.resolve(default_region=region, tenant_settings=tenants)
    assert message in str(failure.value)
    assert "\n" not in str(failure.value)


def changed_charges(*, charge_view: Any, run: TransformRun) -> TransformOutput:
    changed = run.changed("charge_view")
    run.counters["changed"] = len(changed.collect())
    # What the Parquet reader produced: the files whose dictionaries hold none of the batches are skipped whole.
    leaves = changed._jdf.queryExecution().executedPlan().collectLeaves()
    scans = [leaves.apply(index) for index in range(leaves.size())]
    run.counters["scanned"] = sum(
        int(scan.metrics().apply("numOutputRows").value()) for scan in scans if "parquet" in scan.nodeName().lower()
    )
    return TransformOutput(rows=charge_view.select("charge_id", "amount"), complete=True)


@pytest.mark.parametrize("filtered", [True, False], ids=["batches-filtered", "batches-joined"])
def test_changed_rows_of_an_input_table_are_those_of_its_new_raw_batches_not_whole_rewritten_files(
    spark, tmp_path, monkeypatch, filtered
) -> None:
    """A merge rewrites every file holding a changed key, unchanged neighbours included; a downstream transform that
    recomputed from all of them would redo everything on a 1% increment."""
    if not filtered:  # More batches than a filter is built for: joined, the same rows, every one of them decoded.
        monkeypatch.setattr(runner_module, "MAX_FILTERED_BATCHES", 5)
    # The second run's new rows stay in a file of their own, beside the copy of the first file's other rows (a merge
    # appends them to that copy while it stays under this size), so the reader can skip the copy.
    monkeypatch.setattr(commit_module, "MAX_ROWS_PER_FILE", 100)
    zone = RawZone(spark, tmp_path)
    processed = tmp_path / "processed"
    schema = tap_schema("stripe", "charges")
    downstream = TransformDescriptor(
        name="changed_charges",
        inputs=[TableInput("charge_view")],
        output="changed_charges",
        key=["charge_id"],
        function="tests.test_transform_runner:changed_charges",
    )
    transforms = [charges_transform("v1"), downstream]
    zone.land("stripe", "charges", schema, [stripe_charge(f"ch_{index}", 100 + index, "usd") for index in range(200)])
    first = by_table(run(zone, processed, transforms=transforms))
    assert first["changed_charges"].quality.counters == {"changed": 200, "scanned": 200}  # All of it.
    catalog = ProcessedZone.resolve(str(processed)).open()
    before = set(live_data_files(load_table(catalog, "acme", "charge_view")))

    # More batches than Spark pushes down by default (ten, above which it would push a min-max range instead).
    zone.land("stripe", "charges", schema, [stripe_charge("ch_0", 999, "usd"), stripe_charge("ch_new", 7, "usd")])
    for index in range(11):
        zone.land("stripe", "charges", schema, [stripe_charge(f"ch_batch_{index}", index, "usd")])
    second = by_table(run(zone, processed, transforms=transforms))
    assert second["charge_view"].status == "committed"
    assert second["charge_view"].raw_files == 12
    view = load_table(catalog, "acme", "charge_view")
    added = sorted(set(live_data_files(view)) - before)
    assert read_data_files(spark, view, added).count() > 13  # The merge rewrote ch_0's neighbours too.
    # ch_0's new version, ch_new and the eleven others only; filtered, the Parquet reader skipped the copy of the other
    # 199 rows.
    assert second["changed_charges"].quality.counters == {"changed": 13, "scanned": 13 if filtered else 212}
    rows = {row["charge_id"]: row["amount"] for row in table_rows(spark, processed, "changed_charges")}
    assert len(rows) == 212
    assert (rows["ch_0"], rows["ch_1"], rows["ch_new"], rows["ch_batch_10"]) == (999, 101, 7, 10)
