"""customer_events on real Spark through the runner: every event that names a customer, under the unified
customer_id of the identity map (the provider id first, then the email), its payload as properties; events naming
no one are left out; a later merge moves a person's earlier events to the surviving id; two incremental runs equal a
full run. Registered through the cdp entry points; the PostgreSQL loader loads it with its segment index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.run import TransformSettings
from plugins.transforms.runner import run_transforms
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_table
from tests.test_transforms_builtins import RawZone, tap_schema
from tests.test_transforms_customers import DAY, JAN_1, land_half, owner, profiles

pytestmark = pytest.mark.timeout(1500)  # Three runs of five transforms on a shared machine.


def stripe_event(event_id: str, day: int, data_object: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "charge.succeeded",
        "created": JAN_1 + day * DAY,
        "data": {"object": data_object},
    }


def land(zone: RawZone, half: int) -> None:
    """The customers test's two halves (Cat's Stripe profile merges into her older lead's in half 2) and events:
    one about Cat's Stripe customer, one naming only Bob's email, one about a customer no record knows, one naming
    no one."""
    land_half(zone, half)
    if half == 1:
        zone.land(
            "stripe",
            "events",
            tap_schema("stripe", "events"),
            [
                stripe_event("evt_cat", 3, {"id": "ch_1", "object": "charge", "customer": "cus_cat", "amount": 500}),
                stripe_event("evt_bob", 4, {"id": "ch_2", "object": "charge", "receipt_email": "BOB@a.io"}),
                stripe_event("evt_ghost", 5, {"id": "ch_3", "object": "charge", "customer": "cus_ghost"}),
                stripe_event("evt_nobody", 6, {"id": "ch_4", "object": "charge"}),
            ],
        )


def descriptors() -> list[Any]:
    from transforms.customer_events import cdp_transforms as customer_events
    from transforms.customer_records import cdp_transforms as records
    from transforms.customers import cdp_transforms as customers
    from transforms.events import cdp_transforms as events

    return [*records(), *events(), *customers(), *customer_events()]


def run(zone: RawZone, processed: Path, **options: Any) -> dict[str, Any]:
    summary = run_transforms(
        tenants=["acme"],
        raw_url=f"{zone.base}/raw",
        dlq_url=f"{zone.base}/dlq",
        registry_url=f"{zone.base}/registry",
        processed_url=str(processed),
        transforms=descriptors(),
        settings=TransformSettings(default_region="FR"),
        **options,
    )
    assert not [table.error for table in summary.tables if table.status == "failed"]
    return {table.table: table for table in summary.tables}


def events_of(spark, processed: Path) -> dict[str, dict[str, Any]]:
    table = load_table(ProcessedZone.resolve(str(processed), None).open(), "acme", "customer_events")
    return {row["event_id"]: row.asDict() for row in read_table(spark, table).drop(DATA_FILE_COLUMN).collect()}


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("customer_events")
    zone, incremental, scratch = RawZone(spark, base), base / "incremental", base / "scratch"
    seen: dict[str, Any] = {}
    land(zone, 1)
    seen["run1"] = run(zone, incremental)
    seen["events1"], seen["profiles1"] = events_of(spark, incremental), profiles(spark, incremental)
    land(zone, 2)
    seen["run2"] = run(zone, incremental)
    seen["events2"], seen["profiles2"] = events_of(spark, incremental), profiles(spark, incremental)
    run(zone, scratch, full_refresh=True)
    seen["scratch"] = events_of(spark, scratch)
    return seen


def test_events_carry_the_unified_customer_id_and_events_naming_no_one_are_left_out(history) -> None:
    events, people = history["events1"], history["profiles1"]
    assert set(events) == {"stripe:evt_cat", "stripe:evt_bob", "stripe:evt_ghost"}
    assert events["stripe:evt_cat"]["customer_id"] == owner(people, "stripe_customer:cus_cat")["customer_id"]
    # Only an email (normalised): found through the map's email.
    assert (
        events["stripe:evt_bob"]["customer_id"]
        == owner(people, "shopify_customer:gid://shopify/Customer/102")["customer_id"]
    )
    # A customer known only from events is a profile of its own, and its events carry that profile's id.
    assert events["stripe:evt_ghost"]["customer_id"] == owner(people, "stripe_customer:cus_ghost")["customer_id"]
    cat = events["stripe:evt_cat"]
    assert (cat["type"], cat["occurred_at"].isoformat()) == ("charge.succeeded", "2026-01-04T00:00:00")
    assert json.loads(cat["properties"]) == {"id": "ch_1", "object": "charge", "customer": "cus_cat", "amount": 500}
    assert list(next(iter(events.values()))) == ["event_id", "customer_id", "type", "occurred_at", "properties"]


def test_a_merge_moves_earlier_events_to_the_surviving_id_and_incremental_equals_full(history) -> None:
    before = history["events1"]["stripe:evt_cat"]["customer_id"]
    after = history["events2"]["stripe:evt_cat"]["customer_id"]
    survivor = owner(history["profiles2"], "stripe_customer:cus_cat")["customer_id"]
    assert after == survivor != before  # Cat's Stripe profile merged into her lead's, born earlier.
    assert (
        history["events2"]["stripe:evt_sms"]["customer_id"]
        == owner(history["profiles2"], "stripe_customer:cus_ann")["customer_id"]
    )
    assert history["events2"] == history["scratch"]
    assert history["run2"]["customer_events"].mode == "complete"


def test_it_registers_through_the_entry_points_and_loads_into_postgresql_with_its_index() -> None:
    from loaders.postgres.workloads import IndexSpec, workload
    from plugins.loaders.runner import table_keys
    from plugins.manager import create_plugin_manager, transforms
    from transforms.customer_events.transform import OUTPUT_COLUMNS

    ordered = {t.name: t for t in transforms(create_plugin_manager())}
    names = list(ordered)
    assert names.index("customers") < names.index("customer_events") > names.index("events")
    descriptor = ordered["customer_events"]
    assert [str(source) for source in descriptor.inputs] == ["table:events", "table:customers"]
    assert (descriptor.key, descriptor.partitioning) == (["event_id"], ["month(occurred_at)"])
    assert {rule.column for rule in descriptor.load_quality_rules()} <= set(OUTPUT_COLUMNS)
    assert table_keys(ordered.values())["customer_events"] == ("event_id",)  # What `cdp load run` loads.
    columns = {"event_id": "text", "customer_id": "text", "type": "text", "occurred_at": "timestamptz"}
    plan = workload("customer_events", {**columns, "properties": "text"}, ("event_id",), trigram=True)
    assert plan.indexes == (IndexSpec("customer_type_time", ("customer_id", "type", "occurred_at")),)
    assert plan.partition_by_month == "occurred_at"
