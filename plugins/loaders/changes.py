"""The snapshot diff: which rows of a processed table changed between the snapshot a store holds and the target one.

Iceberg snapshots list their data files; the transforms commit appends and file-level replaces (docs/transforms.md),
never row-level deletes. So the rows to upsert are those of the files the target has and the loaded snapshot has not,
and the keys to delete are those of the files it no longer has that no added file holds (a merged-away customer: its
file was replaced by one without it). Files are read with pyiceberg's Arrow reader (name mapping, added columns read
as nulls), one data file at a time, so memory holds one file's batches, never the table. Only the deleted keys are
computed from key columns of the changed files held together.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError
from plugins.transforms.commit import live_data_files

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.manifest import DataFile
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

    from plugins.transforms.catalog import ProcessedZone


class LoadPlanError(CdpError):
    """A table cannot be loaded as asked: no key, or a snapshot it does not have."""


@dataclass(frozen=True)
class SnapshotChanges:
    """What changed in ``table`` from ``loaded_snapshot_id`` to ``snapshot_id`` (a :class:`TableChanges`).

    ``complete`` is true when every row must be loaded: nothing was loaded before, or the loaded snapshot can no longer
    be compared with (``reason`` says why, in one line).
    """

    table: Table
    key: Sequence[str]
    snapshot_id: int
    loaded_snapshot_id: int | None
    added_files: Sequence[DataFile]
    removed_files: Sequence[DataFile]
    snapshot_files: Sequence[DataFile] = field(repr=False)
    complete: bool
    reason: str = ""
    # The key columns of the added files, kept once upserts() has read them all (a list, so the frozen object can).
    _added_keys: list[list[pa.RecordBatch]] = field(default_factory=list, repr=False, compare=False)

    @property
    def schema(self) -> pa.Schema:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        return schema_to_pyarrow(self.table.schema(), include_field_ids=False)

    @property
    def row_count(self) -> int:
        return sum(data_file.record_count for data_file in self.snapshot_files)

    @property
    def unchanged(self) -> bool:
        """Nothing to do: the store already holds this snapshot's rows."""
        return not self.complete and not self.added_files and not self.removed_files

    def upserts(self) -> Iterator[pa.RecordBatch]:
        if self.complete:
            yield from read_batches(self.table, self.snapshot_files)
            return
        keys = []
        for batch in read_batches(self.table, self.added_files):
            keys.append(batch.select(list(self.key)))
            yield batch
        # Read to the end: deleted_keys() needs these keys and need not read the added files again.
        self._added_keys[:] = [keys]

    def all_rows(self) -> Iterator[pa.RecordBatch]:
        return read_batches(self.table, self.snapshot_files)

    def deleted_keys(self) -> Iterator[pa.RecordBatch]:
        if self.complete or not self.removed_files:
            return iter(())
        import pyarrow as pa

        keys = list(self.key)
        removed = _key_table(self.table, self.removed_files, keys)
        if not self._added_keys:
            kept = _key_table(self.table, self.added_files, keys)
        elif self._added_keys[0]:
            kept = pa.Table.from_batches(self._added_keys[0]).cast(removed.schema)
        else:
            kept = removed.schema.empty_table()
        gone = removed.join(kept, keys=keys, join_type="left anti") if kept.num_rows else removed
        gone = gone.group_by(keys).aggregate([]).select(keys)  # One row per key.
        return iter(gone.to_batches()) if gone.num_rows else iter([pa.RecordBatch.from_pylist([], gone.schema)])


def plan_changes(table: Table, key: Sequence[str], snapshot_id: int, loaded_snapshot_id: int | None) -> SnapshotChanges:
    """The diff between the loaded snapshot and ``snapshot_id``; everything when the loaded one cannot be compared."""
    name = ".".join(table.name())
    if table.snapshot_by_id(snapshot_id) is None:
        raise LoadPlanError(f"table {name} has no snapshot {snapshot_id}")
    columns = {column.name for column in table.schema().fields}
    if not key or (missing := [column for column in key if column not in columns]):
        what = f"key column(s) {', '.join(missing)} missing" if key else "no key"
        raise LoadPlanError(f"table {name}: {what}; a loaded table needs the key its transform declares")
    target = live_data_files(table, snapshot_id)

    def everything(reason: str = "") -> SnapshotChanges:
        files = list(target.values())
        return SnapshotChanges(
            table, key, snapshot_id, loaded_snapshot_id, files, [], files, complete=True, reason=reason
        )

    if loaded_snapshot_id is None:
        return everything()
    if table.snapshot_by_id(loaded_snapshot_id) is None:
        return everything(f"{name}: loaded snapshot {loaded_snapshot_id} was expired from the table's history")
    if loaded_snapshot_id not in _ancestor_ids(table, snapshot_id):
        return everything(f"{name}: loaded snapshot {loaded_snapshot_id} is not an ancestor of {snapshot_id}")
    loaded = live_data_files(table, loaded_snapshot_id)
    added = [data_file for path, data_file in target.items() if path not in loaded]
    removed = [data_file for path, data_file in loaded.items() if path not in target]
    return SnapshotChanges(
        table, key, snapshot_id, loaded_snapshot_id, added, removed, list(target.values()), complete=False
    )


def _ancestor_ids(table: Table, snapshot_id: int) -> set[int]:
    from pyiceberg.table.snapshots import ancestors_of

    return {snapshot.snapshot_id for snapshot in ancestors_of(table.snapshot_by_id(snapshot_id), table.metadata)}


def read_batches(table: Table, files: Iterable[DataFile], schema: Schema | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of ``files`` in the table's current schema (or ``schema``, a projection), one file at a time."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
    from pyiceberg.table import FileScanTask

    projected = schema or table.schema()
    target = schema_to_pyarrow(projected, include_field_ids=False)
    scan = ArrowScan(table.metadata, table.io, projected, AlwaysTrue())
    for data_file in files:
        # One task per call: pyiceberg reads a call's tasks in parallel, all of them in memory at once.
        for batch in scan.to_record_batches([FileScanTask(data_file)]):
            yield batch if batch.schema.equals(target) else batch.cast(target)


def _key_table(table: Table, files: Sequence[DataFile], keys: list[str]) -> pa.Table:
    import pyarrow as pa
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    projection = table.schema().select(*keys)
    target = schema_to_pyarrow(projection, include_field_ids=False)
    batches = [batch.select(keys) for batch in read_batches(table, files, projection)]
    return pa.Table.from_batches(batches, target) if batches else target.empty_table()


def erasure_tombstones(zone: ProcessedZone | None, tenant: str) -> pa.Table:
    """The tenant's erasure tombstones (``id_type``, ``id_value``) from the processed zone (``zone``, else the one the
    environment names), read with pyiceberg's Arrow reader: no Spark for an export or a send. Empty when the tenant
    never erased anyone (no ``erasures`` table)."""
    import pyarrow as pa
    from pyiceberg.exceptions import NoSuchTableError

    from plugins.transforms.catalog import ProcessedZone, table_identifier
    from plugins.transforms.erasure import ERASURES_TABLE

    empty = pa.table({"id_type": pa.array([], pa.string()), "id_value": pa.array([], pa.string())})
    try:
        table = (zone or ProcessedZone.resolve()).open().load_table(table_identifier(tenant, ERASURES_TABLE))
    except NoSuchTableError:
        return empty
    batches = [
        batch.select(["id_type", "id_value"]).cast(empty.schema)
        for batch in read_batches(table, live_data_files(table).values())
    ]
    return pa.Table.from_batches(batches, empty.schema) if batches else empty
