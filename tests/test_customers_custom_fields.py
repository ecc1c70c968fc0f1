"""customers.custom_fields: the profile's records' custom fields merged per key, the most recent record winning a
key (survivorship's order), values keeping their JSON type; two incremental runs equal one full run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from plugins.transforms.run import TransformSettings
from plugins.transforms.runner import run_transforms
from tests.test_transforms_builtins import RawZone
from tests.test_transforms_customers import iso, owner, profiles, salesforce_record, salesforce_schema
from transforms.customers.transform import merged_custom_fields

pytestmark = pytest.mark.timeout(1500)  # Three runs of customer_records and customers on a shared machine.
CUSTOM = ("Plan__c", "Seats__c")
CONTACT = salesforce_schema("LastName", "Email", *CUSTOM, booleans=("Vip__c",))
LEAD = salesforce_schema("LastName", "Email", *CUSTOM)


def test_values_keep_their_json_type_nulls_and_non_objects_say_nothing(spark) -> None:
    rows = [
        ("cus_a", "r1", "stripe/customers", datetime(2026, 1, 1), '{"plan": "free", "seats": 7, "note": "x"}'),
        ("cus_a", "r2", "salesforce/Contact", datetime(2026, 1, 2), '{"plan": "pro", "seats": "8", "note": null}'),
        ("cus_a", "r3", "shopify/customers", datetime(2026, 1, 3), '[{"key": "vip", "value": "true"}]'),
        ("cus_a", "r4", "salesforce/Lead", datetime(2026, 1, 4), "not json"),
        ("cus_b", "r5", "stripe/customers", datetime(2026, 1, 1), None),
        ("cus_c", "r6", "stripe/customers", None, '{"nested": {"a": [1, 2]}, "flag": true}'),
    ]
    records = spark.createDataFrame(
        rows, "customer_id string, record_id string, source string, updated_at timestamp, custom_fields string"
    )

    merged = {row["customer_id"]: row["custom_fields"] for row in merged_custom_fields(records).collect()}

    # "seats": the later record's text "8" wins over the earlier number 7; "note": the later null says nothing.
    assert merged == {
        "cus_a": '{"note":"x","plan":"pro","seats":"8"}',
        "cus_c": '{"flag":true,"nested":{"a":[1,2]}}',
    }


def test_a_tie_on_updated_at_goes_to_the_smallest_source(spark) -> None:
    same = datetime(2026, 1, 5)
    records = spark.createDataFrame(
        [
            ("cus_a", "r1", "salesforce/Lead", same, '{"plan": "lead"}'),
            ("cus_a", "r2", "salesforce/Contact", same, '{"plan": "contact"}'),
        ],
        "customer_id string, record_id string, source string, updated_at timestamp, custom_fields string",
    )

    assert [row["custom_fields"] for row in merged_custom_fields(records).collect()] == ['{"plan":"contact"}']


def land(zone: RawZone, half: int) -> None:
    """Ann: a contact and a lead sharing her email; half 2 brings a newer version of her contact without a plan.
    Cat: a contact and a lead stated at the same moment. Dan: no custom field at all."""
    if half == 1:
        zone.land(
            "salesforce",
            "Contact",
            CONTACT,
            [
                salesforce_record("003A", 2, LastName="Ann", Email="ann@x.io", Plan__c="free", Seats__c="3",
                                  Vip__c=True),
                salesforce_record("003C", 6, LastName="Cat", Email="cat@x.io", Plan__c="contact"),
                salesforce_record("003D", 1, LastName="Dan", Email="dan@x.io"),
            ],
            key="Id",
        )  # fmt: skip
        zone.land(
            "salesforce",
            "Lead",
            LEAD,
            [
                salesforce_record("00QA", 5, LastName="Ann", Email="ann@x.io", Plan__c="pro"),
                salesforce_record("00QC", 6, LastName="Cat", Email="cat@x.io", Plan__c="lead", Seats__c="9"),
            ],
            key="Id",
        )
    else:
        zone.land(
            "salesforce",
            "Contact",
            CONTACT,
            [
                salesforce_record(  # Created on day 2 like the first version; modified on day 9.
                    "003A", 2, SystemModstamp=iso(9), LastName="Ann", Email="ann@x.io", Seats__c="5", Vip__c=False
                )
            ],
            key="Id",
        )


def run(zone: RawZone, processed: Path, **options: Any) -> None:
    from transforms.customer_records import cdp_transforms as records
    from transforms.customers import cdp_transforms as customers
    from transforms.events import cdp_transforms as events

    summary = run_transforms(
        tenants=["acme"],
        raw_url=f"{zone.base}/raw",
        dlq_url=f"{zone.base}/dlq",
        registry_url=f"{zone.base}/registry",
        processed_url=str(processed),
        transforms=[*records(), *events(), *customers()],
        settings=TransformSettings(),
        **options,
    )
    assert not [table.error for table in summary.tables if table.status == "failed"]


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("custom_fields")
    zone, incremental, scratch = RawZone(spark, base), base / "incremental", base / "scratch"
    land(zone, 1)
    run(zone, incremental)
    first = profiles(spark, incremental)
    land(zone, 2)
    run(zone, incremental)
    run(zone, scratch, full_refresh=True)
    return {"first": first, "second": profiles(spark, incremental), "scratch": profiles(spark, scratch)}


def custom_of(table: dict[str, dict[str, Any]], provider_id: str) -> Any:
    text = owner(table, provider_id)["custom_fields"]
    return None if text is None else json.loads(text)


def test_the_most_recent_record_wins_each_key_and_a_newer_version_without_a_key_keeps_the_older_value(
    history,
) -> None:
    assert custom_of(history["first"], "salesforce_contact:003A") == {"Plan__c": "pro", "Seats__c": "3", "Vip__c": True}
    # The contact's newer version (day 9) changes the seats and the flag and says nothing of the plan: the lead's
    # plan (day 5) stays.
    assert custom_of(history["second"], "salesforce_contact:003A") == {
        "Plan__c": "pro",
        "Seats__c": "5",
        "Vip__c": False,
    }
    # Same moment: the smallest source (salesforce/Contact) wins the plan; the lead alone has seats.
    assert custom_of(history["second"], "salesforce_contact:003C") == {"Plan__c": "contact", "Seats__c": "9"}
    assert custom_of(history["second"], "salesforce_contact:003D") is None


def test_two_incremental_runs_give_the_custom_fields_of_one_full_run(history) -> None:
    assert history["second"] == history["scratch"]
