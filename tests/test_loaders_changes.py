"""The snapshot diff every loader shares (plugins/loaders/changes.py), on tables committed like the transforms'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plugins.loaders.changes import LoadPlanError, plan_changes
from plugins.transforms.catalog import ProcessedZone, create_table
from tests.loading_support import commit, customer, customers_schema


@pytest.fixture
def table(tmp_path: Path) -> Any:
    (tmp_path / "processed").mkdir()
    catalog = ProcessedZone((tmp_path / "processed").as_uri(), f"sqlite:///{tmp_path / 'catalog.db'}").open()
    return create_table(catalog, "acme", "customers", customers_schema())


def keys_of(batches: Any) -> list[str]:
    return sorted(value for batch in batches for value in batch.column("customer_id").to_pylist())


def test_the_diff_upserts_added_files_and_deletes_keys_no_added_file_holds(table: Any) -> None:
    loaded, first = commit(table, [customer(n) for n in range(6)])
    commit(table, [customer(n) for n in range(6, 8)])
    # A merge moved cus_00005 into a new file with cus_00000..2 and dropped cus_00003 and cus_00004.
    latest, _ = commit(table, [customer(n, version=1) for n in (0, 1, 2, 5)], remove=[first])

    changes = plan_changes(table, ["customer_id"], latest, loaded)

    assert not changes.complete
    assert changes.row_count == 6
    before_upserts = keys_of(changes.deleted_keys())  # Reads the added files' keys itself.
    assert keys_of(changes.upserts()) == [f"cus_{n:05d}" for n in (0, 1, 2, 5, 6, 7)]
    assert before_upserts == keys_of(changes.deleted_keys()) == ["cus_00003", "cus_00004"]  # Then from upserts().


def test_nothing_loaded_or_a_snapshot_out_of_the_history_means_everything(table: Any) -> None:
    loaded, first = commit(table, [customer(n) for n in range(3)])
    latest, _ = commit(table, [customer(9)], remove=[first])

    assert plan_changes(table, ["customer_id"], latest, None).complete
    unknown = plan_changes(table, ["customer_id"], latest, 123)
    assert unknown.complete
    assert unknown.reason == "acme.customers: loaded snapshot 123 was expired from the table's history"
    assert keys_of(unknown.upserts()) == ["cus_00009"]
    assert keys_of(unknown.deleted_keys()) == []
    assert plan_changes(table, ["customer_id"], latest, latest).unchanged
    assert not plan_changes(table, ["customer_id"], latest, loaded).unchanged


def test_a_table_without_its_key_columns_is_refused(table: Any) -> None:
    snapshot, _ = commit(table, [customer(1)])
    with pytest.raises(LoadPlanError, match="key column\\(s\\) order_id missing"):
        plan_changes(table, ["order_id"], snapshot, None)
    with pytest.raises(LoadPlanError, match="no key"):
        plan_changes(table, [], snapshot, None)
