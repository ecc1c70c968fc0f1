"""The snapshot diff every loader shares (plugins/loaders/changes.py), on tables committed like the transforms'."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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


def _commit_row_level_deletes(table: Any, data_path: str, content: Any) -> None:
    """Commit what an engine writing merge-on-read leaves (Spark with ``write.merge.mode=merge-on-read``): a delete
    file in a manifest of delete content. pyiceberg writes neither, so this builds them from its manifest classes:
    a position delete of row 1 of ``data_path``, or an equality delete of ``customer_id = cus_00001``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.manifest import (
        DataFile,
        DataFileContent,
        FileFormat,
        ManifestContent,
        ManifestEntry,
        ManifestEntryStatus,
        ManifestWriterV2,
    )
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.table.update.snapshot import _FastAppendFiles
    from pyiceberg.typedef import Record

    class DeleteManifestWriter(ManifestWriterV2):
        def content(self) -> ManifestContent:
            return ManifestContent.DELETES

        @property
        def _meta(self) -> dict[str, str]:
            return {**super()._meta, "content": "deletes"}

    class AddDeletes(_FastAppendFiles):
        def _manifests(self) -> Any:
            writer = DeleteManifestWriter(
                self._transaction.table_metadata.spec(),
                self.schema(),
                self.new_manifest_output(),
                self._snapshot_id,
                self._compression,
            )
            with writer:
                writer.add(
                    ManifestEntry.from_args(
                        status=ManifestEntryStatus.ADDED,
                        snapshot_id=self._snapshot_id,
                        sequence_number=None,
                        file_sequence_number=None,
                        data_file=delete_file,
                    )
                )
            return [*super()._manifests(), writer.to_manifest_file()]

    location = urlparse(table.location()).path
    path = f"{location}/data/deletes-{content.name.lower()}.parquet"
    if content is DataFileContent.POSITION_DELETES:
        # The spec's reserved field ids of a position delete file's columns.
        file_path = pa.field("file_path", pa.string(), False, {"PARQUET:field_id": "2147483546"})
        pos = pa.field("pos", pa.int64(), False, {"PARQUET:field_id": "2147483545"})
        rows = pa.table({"file_path": [data_path], "pos": [1]}, pa.schema([file_path, pos]))
        equality_ids = None
    else:
        field_id = table.schema().find_field("customer_id").field_id
        rows = pa.table(
            {"customer_id": ["cus_00001"]},
            pa.schema([pa.field("customer_id", pa.string(), True, {"PARQUET:field_id": str(field_id)})]),
        )
        equality_ids = [field_id]
    pq.write_table(rows, path)
    delete_file = DataFile.from_args(
        content=content,
        file_path=f"file://{path}",
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=1,
        file_size_in_bytes=Path(path).stat().st_size,
        equality_ids=equality_ids,
        # As Spark writes them: a position delete file of one data file bounds its file_path column to that path.
        lower_bounds={2147483546: data_path.encode()} if equality_ids is None else {},
        upper_bounds={2147483546: data_path.encode()} if equality_ids is None else {},
    )
    delete_file.spec_id = table.metadata.default_spec_id
    with table.transaction() as transaction:  # The snapshot holds the existing manifests and the delete manifest.
        AddDeletes(Operation.DELETE, transaction, transaction._table.io).commit()
    table.refresh()


@pytest.mark.parametrize("kind", ["position", "equality"])
def test_a_table_with_row_level_deletes_from_another_engine_is_refused_not_read_whole(table: Any, kind: str) -> None:
    from pyiceberg.manifest import DataFileContent

    from plugins.transforms.commit import RowLevelDeletesError, live_data_files

    loaded, data_path = commit(table, [customer(n) for n in range(3)])
    content = DataFileContent.POSITION_DELETES if kind == "position" else DataFileContent.EQUALITY_DELETES
    _commit_row_level_deletes(table, data_path, content)
    if kind == "position":  # The delete is real: pyiceberg's own reader no longer returns the row.
        assert sorted(table.scan().to_arrow().column("customer_id").to_pylist()) == ["cus_00000", "cus_00002"]

    what = "position delete files on 1 of its 1 data files" if kind == "position" else "equality delete files"
    expected = f"table acme.customers has {what} \\(row-level deletes written by another engine\\)"
    with pytest.raises(RowLevelDeletesError, match=expected) as raised:
        live_data_files(table)
    assert "\n" not in str(raised.value)
    assert "rewrite_data_files" in str(raised.value)
    with pytest.raises(RowLevelDeletesError, match=expected):  # Loaders refuse too, instead of loading cus_00001.
        plan_changes(table, ["customer_id"], table.current_snapshot().snapshot_id, loaded)
    assert set(live_data_files(table, loaded)) == {data_path}  # The snapshot before the deletes still reads.


def test_a_position_delete_of_a_file_no_longer_in_the_table_applies_to_nothing_and_is_not_refused(table: Any) -> None:
    from pyiceberg.manifest import DataFileContent

    from plugins.transforms.commit import live_data_files

    _, replaced = commit(table, [customer(n) for n in range(3)])
    latest, kept = commit(table, [customer(n, version=1) for n in range(3)], remove=[replaced])
    _commit_row_level_deletes(table, replaced, DataFileContent.POSITION_DELETES)  # Dangling: its file is gone.

    assert set(live_data_files(table)) == {kept}
    changes = plan_changes(table, ["customer_id"], table.current_snapshot().snapshot_id, latest)
    assert changes.unchanged
