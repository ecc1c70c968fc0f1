"""Drift detection: SCHEMA messages against the registry, incompatible schemas to the DLQ, undeclared properties."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from plugins.core.storage import ObjectStore
from schema_registry import SchemaRegistry, subject_name
from tests.s3raw_support import (
    CUSTOMERS_SCHEMA,
    dead_letters,
    raw_records,
    record_message,
    run_target,
    schema_message,
    zone_config,
)

SUBJECT = subject_name("acme", "stripe", "customers")
WITH_PHONE = {
    **CUSTOMERS_SCHEMA,
    "properties": {**CUSTOMERS_SCHEMA["properties"], "phone": {"type": ["string", "null"]}},
}
AGE_AS_STRING = {
    **CUSTOMERS_SCHEMA,
    "properties": {**CUSTOMERS_SCHEMA["properties"], "age": {"type": ["string", "null"]}},
}


def alerts(caplog: pytest.LogCaptureFixture, kind: str) -> list[dict[str, Any]]:
    # The log sink nests an alert's details under "details"; flatten them for the assertions.
    return [{**r.cdp, **r.cdp["details"]} for r in caplog.records if getattr(r, "cdp_event", None) == f"alert.{kind}"]


def registry(config: dict[str, Any]) -> SchemaRegistry:
    return SchemaRegistry(ObjectStore(config["registry_url"]))


def test_first_schema_registers_version_1(store_url: str) -> None:
    config = zone_config(store_url)
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA)])

    latest = registry(config).latest(SUBJECT)
    assert latest is not None
    assert latest.version == 1


def test_identical_schema_registers_nothing_and_raises_no_alert(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = zone_config(str(tmp_path))
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA)])
    reordered = {"properties": CUSTOMERS_SCHEMA["properties"], "required": ["id"], "type": "object", "title": "C"}
    caplog.set_level(logging.INFO)
    run_target(config, [schema_message("customers", reordered), record_message("customers", {"id": "c1"})])

    assert registry(config).versions(SUBJECT) == [1]
    assert alerts(caplog, "schema_drift") == []
    assert [r["_cdp_schema_version"] for r in raw_records(config)] == [1]


def test_compatible_change_registers_a_new_version_and_raises_an_info_alert(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = zone_config(store_url)
    caplog.set_level(logging.INFO)
    run_target(
        config,
        [
            schema_message("customers", CUSTOMERS_SCHEMA),
            record_message("customers", {"id": "c1"}),
            schema_message("customers", WITH_PHONE),
            record_message("customers", {"id": "c2", "phone": "+1555"}),
        ],
    )

    assert registry(config).versions(SUBJECT) == [1, 2]
    [drift] = alerts(caplog, "schema_drift")
    assert drift["severity"] == "info"
    assert (drift["from_version"], drift["to_version"]) == (1, 2)
    assert any("$.phone" in change for change in drift["changes"])
    versions = {r["id"]: r["_cdp_schema_version"] for r in raw_records(config)}
    assert versions == {"c1": 1, "c2": 2}


def test_incompatible_change_is_not_registered_and_its_records_go_to_the_dlq(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = zone_config(store_url)
    caplog.set_level(logging.INFO)
    run_target(
        config,
        [
            schema_message("customers", CUSTOMERS_SCHEMA),
            record_message("customers", {"id": "c1", "age": 3}),
            schema_message("customers", AGE_AS_STRING),
            record_message("customers", {"id": "c2", "age": "three"}),
            record_message("customers", {"id": "c3", "age": "four"}),
        ],
    )

    assert registry(config).versions(SUBJECT) == [1]
    [alert] = alerts(caplog, "schema_incompatible")
    assert alert["severity"] == "error"
    assert any(v.startswith("$.age") for v in alert["violations"])
    letters = dead_letters(config)
    assert sorted(d["record"]["id"] for d in letters) == ["c2", "c3"]
    assert {d["error_type"] for d in letters} == {"schema_incompatible"}
    assert all(any(e["path"] == "$.age" for e in d["errors"]) for d in letters)
    assert [r["id"] for r in raw_records(config)] == ["c1"]


def test_operator_registered_schema_lets_the_next_run_land_the_records(tmp_path: Any) -> None:
    config = zone_config(str(tmp_path))
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA)])
    registry(config).register(SUBJECT, AGE_AS_STRING, force=True)  # What `cdp schema register --force` does.

    run_target(
        config, [schema_message("customers", AGE_AS_STRING), record_message("customers", {"id": "c", "age": "x"})]
    )

    assert dead_letters(config) == []
    assert [r["_cdp_schema_version"] for r in raw_records(config)] == [2]


def test_undeclared_properties_are_kept_counted_and_alerted_once_per_property(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = zone_config(str(tmp_path))
    caplog.set_level(logging.INFO)
    messages = [schema_message("customers", CUSTOMERS_SCHEMA)]
    messages += [record_message("customers", {"id": f"c{i}", "plan": "pro", "address": {"zip": i}}) for i in range(5)]
    messages += [record_message("customers", {"id": "d", "tier": 2})]
    target, _ = run_target(config, messages)

    drift = alerts(caplog, "schema_drift")
    assert sorted(a["property"] for a in drift) == ["$.address.zip", "$.plan", "$.tier"]
    assert {a["severity"] for a in drift} == {"warning"}
    assert target.undeclared.counts[("customers", "$.plan")] == 5
    assert target.undeclared.counts[("customers", "$.tier")] == 1
    assert sorted(r["id"] for r in raw_records(config) if "plan" in r) == [f"c{i}" for i in range(5)]
    assert dead_letters(config) == []


def test_free_form_objects_declared_with_empty_properties_raise_no_drift(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    schema = {
        **CUSTOMERS_SCHEMA,
        "properties": {
            **CUSTOMERS_SCHEMA["properties"],
            "metadata": {"type": ["object", "null"], "properties": {}},
            "closed": {"type": ["object", "null"], "properties": {}, "additionalProperties": False},
        },
    }
    config = zone_config(str(tmp_path))
    caplog.set_level(logging.INFO)
    record = {"id": "c1", "metadata": {"order_ref": "A-1", "campaign": "spring"}, "plan": "pro"}
    run_target(config, [schema_message("customers", schema), record_message("customers", record)])

    assert [a["property"] for a in alerts(caplog, "schema_drift")] == ["$.plan"]
    assert [r["metadata"] for r in raw_records(config)] == [record["metadata"]]
