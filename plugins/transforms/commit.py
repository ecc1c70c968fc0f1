"""Spark writes a table's Parquet data files; pyiceberg commits them, with the raw files they came from, atomically.

Two steps, so a crash between them changes nothing a reader sees:

1. :func:`write_data_files` has Spark write Parquet (snappy, microsecond timestamps) under the table's location, one
   Iceberg partition per file. Local warehouses use Spark's own writer; ``s3://`` warehouses, where Spark has no
   hadoop-aws, a pyarrow writer that runs on the executors (``mapInArrow``). A merge has Spark write only the rows of
   the keys it touched; :func:`rewrite_keeping_rows` copies the replaced files' other rows with pyarrow.
2. :func:`commit_files` commits those files in ONE snapshot: a fast append for new files, or an overwrite that adds the
   rewritten files and removes the old ones (merges, full refreshes). pyiceberg's own ``upsert``/``delete`` rewrite
   data on the driver and are not the merge path. The snapshot's summary points at the list of every raw file the
   table has processed, so that list commits with the output or not at all.

Files written by a run that never committed stay unreferenced: no snapshot sees them (orphan-file cleanup removes them).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from plugins.core.errors import CdpError
from plugins.core.events import log_event
from plugins.core.storage import ObjectStore
from plugins.transforms.catalog import NO_COMMIT_RETRIES

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.table.metadata import TableMetadata
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: Snapshot summary keys (Iceberg keeps summaries as strings).
#: The quality report of the run that made a snapshot (JSON, written by the runner, read by ``cdp tables show``).
QUALITY_PROPERTY = "cdp.quality"
PROCESSED_FILES_PROPERTY = "cdp.processed-raw-files"
PROCESSED_COUNT_PROPERTY = "cdp.processed-raw-files-count"
PROCESSED_ADDED_PROPERTY = "cdp.processed-raw-files-added"
#: Marks the snapshots maintenance commits (a compaction: the same rows), so history tells them from a transform's.
MAINTENANCE_PROPERTY = "cdp.maintenance"
PARTITION_COLUMN_PREFIX = "cdp_partition_"
MAX_ROWS_PER_FILE = 5_000_000


class CommitError(CdpError):
    """Data files could not be committed (the table changed meanwhile, or a file to replace is not in it)."""


class RowLevelDeletesError(CommitError):
    """A table's snapshot has row-level delete files (Iceberg v2 position or equality deletes), which another engine
    wrote: cdp reads and replaces whole data files, so it would bring the deleted rows back."""


@dataclass(frozen=True)
class CommitResult:
    """One committed snapshot: its id, what it did and how many raw files the table has now processed."""

    snapshot_id: int
    operation: str
    added_files: int
    removed_files: int
    processed_raw_files: int


# -- writing ------------------------------------------------------------------------------------------------------


def write_data_files(df: DataFrame, table: Table, *, run_id: str | None = None) -> list[str]:
    """Write the table's columns of ``df`` as Parquet data files under ``table``'s location; return their URLs.

    Nothing is committed: the files become part of the table only through :func:`commit_files`.
    """
    run = run_id or uuid.uuid4().hex
    target = f"{table.location().rstrip('/')}/data/run-{run}"
    names = [field.name for field in table.schema().fields]
    if missing := [name for name in names if name not in df.columns]:
        raise CommitError(f"table {'.'.join(table.name())}: the output lacks column(s) {', '.join(missing)}")
    hidden = _partition_columns(df, table)
    output = df.select(*[df[name] for name in names], *[expr.alias(name) for name, expr in hidden.items()])
    if hidden:
        # One Iceberg partition per file: rows of a partition go to the same task, split into folders by value.
        output = output.repartition(*hidden).sortWithinPartitions(*hidden)
    if target.startswith("file:"):
        writer = output.write.partitionBy(*hidden) if hidden else output.write
        writer.parquet(target)
        store = ObjectStore(target, setting="processed_url")
        files = [f"{target}/{info.key}" for info in store.list() if info.key.endswith(".parquet")]
    else:
        files = _write_with_pyarrow(output, target, list(hidden))
    log_event(logger, "data_files_written", table=".".join(table.name()), files=len(files), run=run)
    return sorted(files)


def _partition_columns(df: DataFrame, table: Table) -> dict[str, Column]:
    """A Spark column per partition field whose values split rows exactly as the Iceberg transform does."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    schema = table.schema()
    columns: dict[str, Column] = {}
    for position, field in enumerate(table.spec().fields):
        source = schema.find_field(field.source_id)
        value = df[source.name]
        kind = str(field.transform).split("[")[0]
        if kind == "identity":
            expr = value
        elif kind == "year":
            expr = F.year(value) - 1970
        elif kind == "month":
            expr = (F.year(value) - 1970) * 12 + F.month(value) - 1
        elif kind == "day":
            expr = F.datediff(F.to_date(value), F.lit("1970-01-01"))
        elif kind == "hour":
            expr = F.floor(F.unix_micros(value) / 3_600_000_000)
        elif kind == "truncate":
            width = int(field.transform.width)  # type: ignore[attr-defined]
            is_string = str(source.field_type) == "string"
            expr = F.substring(value, 1, width) if is_string else value - F.pmod(value, F.lit(width))
        elif kind == "bucket":
            expr = _iceberg_bucket(field.transform, source.field_type)(value)
        else:
            raise CommitError(f"table {'.'.join(table.name())}: partition transform {field.transform} is not supported")
        numbered = kind in ("year", "month", "day", "hour", "bucket")
        columns[f"{PARTITION_COLUMN_PREFIX}{position}"] = expr.cast(LongType()) if numbered else expr
    return columns


def _iceberg_bucket(transform: Any, source_type: Any) -> Callable[[Column], Column]:
    """An Arrow UDF computing Iceberg's bucket (murmur3 of the value's bytes), which Spark's hash() is not: pyiceberg's
    vectorised transform (pyiceberg-core, in Rust) over each Arrow batch. Per value in Python it cost about 2
    microseconds a row, 10 CPU-seconds for the identity map of a million records; this takes 0.06 s per million."""
    import pyarrow as pa
    from pyspark.sql.pandas.functions import arrow_udf

    def bucket(values: pa.Array) -> pa.Array:
        # Made on the executor: the Rust function does not pickle, pyiceberg's transform and type do.
        return bucket_values(transform, source_type, values)

    # This module postpones annotations (strings); Spark reads the UDF's kind from real ones.
    bucket.__annotations__ = {"values": pa.Array, "return": pa.Array}
    return arrow_udf(bucket, "long")  # type: ignore[call-overload,no-any-return]


def bucket_values(transform: Any, source_type: Any, values: pa.Array) -> pa.Array:
    """Iceberg's bucket (``transform``) of each value (null stays null) as int64, by pyiceberg's vectorised transform.
    Spark's byte and short columns arrive as int8 and int16, which Iceberg stores as int and pyiceberg-core does not
    take: they are widened first (the same numbers, the same hash)."""
    import pyarrow as pa

    if pa.types.is_int8(values.type) or pa.types.is_int16(values.type):
        values = values.cast(pa.int32())
    result: pa.Array = transform.pyarrow_transform(source_type)(values).cast(pa.int64())
    return result


def _write_with_pyarrow(output: DataFrame, target: str, hidden: list[str]) -> list[str]:
    """Write to ``s3://`` on the executors with pyarrow (no hadoop-aws needed); each task returns the URLs it wrote."""
    schema_of_paths = "path string"
    endpoint = ObjectStore(target, setting="processed_url").s3_endpoint_url  # The driver's, for every executor.

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import pyarrow.dataset as ds
        from pyspark import TaskContext

        context = TaskContext.get()
        task = f"{context.partitionId():05d}-{context.attemptNumber()}" if context else "00000-0"
        peek = iter(batches)
        first = next(peek, None)
        if first is None:
            return
        store = ObjectStore(target, s3_endpoint_url=endpoint, setting="processed_url")
        written: list[str] = []

        def all_batches() -> Iterator[pa.RecordBatch]:
            yield first
            yield from peek

        ds.write_dataset(
            pa.RecordBatchReader.from_batches(first.schema, all_batches()),
            store.fs_path(),
            filesystem=store.fs,
            format="parquet",
            partitioning=hidden or None,
            partitioning_flavor="hive" if hidden else None,
            basename_template=f"part-{task}-{uuid.uuid4().hex}-{{i}}.parquet",
            file_options=ds.ParquetFileFormat().make_write_options(compression="snappy", coerce_timestamps="us"),
            max_rows_per_file=MAX_ROWS_PER_FILE,
            max_rows_per_group=min(1_000_000, MAX_ROWS_PER_FILE),
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda file: written.append(file.path),
            use_threads=False,
        )
        prefix = store.fs_path().rstrip("/")
        urls = [f"{target}{path.removeprefix(prefix)}" for path in written]
        yield pa.RecordBatch.from_pydict({"path": urls})

    return [row["path"] for row in output.mapInArrow(write, schema_of_paths).collect()]


def rewrite_keeping_rows(
    spark: SparkSession,
    table: Table,
    replaced: Sequence[str],
    written: Sequence[str],
    dropped: pa.Table,
    *,
    run_id: str,
) -> dict[str, int]:
    """The files to commit in place of ``replaced`` (live data files of ``table``) and ``written`` (this run's files
    from :func:`write_data_files`), with their rows. Nothing is committed.

    Each replaced file's rows whose key is not in ``dropped`` (the key columns by name; a null key part equals a
    null) are copied to a new file with the table's columns, and each written file is appended to the copy of the
    smallest replaced file of its partition while that copy stays within ``MAX_ROWS_PER_FILE`` rows, so a merge
    rarely adds a file to a partition; a written file not appended stays as it is. A copy left without rows is not
    written; an appended written file is deleted.

    An incremental merge touches a few keys in many files: their other rows are copied here by pyarrow, in batches (in
    Spark tasks, or on the driver up to ``COPY_ON_DRIVER_ROWS``), instead of Spark decoding, shuffling, re-bucketing
    and encoding them again (the merge of a 1 % increment spent most of its write there).
    """
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    live = live_data_files(table)
    smallest: dict[tuple[Any, ...], str] = {}
    for path in sorted(replaced, key=lambda path: (live[path].record_count, path), reverse=True):
        smallest[_partition_key(live[path])] = path
    appended: dict[str, list[str]] = {path: [] for path in replaced}
    rows = {path: live[path].record_count for path in replaced}
    files: dict[str, int] = {}
    for path in written:
        new = data_file(table.io, table.metadata, path)
        into = smallest.get(_partition_key(new))
        if into is not None and rows[into] + new.record_count <= MAX_ROWS_PER_FILE:
            appended[into].append(path)
            rows[into] += new.record_count
        else:
            files[path] = new.record_count
    if not replaced:
        return files
    target = f"{table.location().rstrip('/')}/data/kept-{run_id}"
    endpoint = ObjectStore(target, setting="processed_url").s3_endpoint_url
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    if sum(live[path].record_count for path in replaced) <= COPY_ON_DRIVER_ROWS:
        # A Spark job's fixed cost (tasks, Python workers) is more than copying this few rows here takes.
        copied = (_copy_kept_rows(path, others, target, schema, dropped, endpoint) for path, others in appended.items())
        found = {copy[0]: copy[1] for copy in copied if copy is not None}
    else:
        found = _copy_on_executors(spark, appended, target, schema, dropped, endpoint)
    for path in (path for others in appended.values() for path in others):
        table.io.delete(path)
    log_event(logger, "kept_rows_copied", table=".".join(table.name()), replaced=len(replaced), copies=len(found))
    return {**files, **found}


def _copy_on_executors(
    spark: SparkSession,
    appended: Mapping[str, Sequence[str]],
    target: str,
    schema: pa.Schema,
    dropped: pa.Table,
    endpoint: str | None,
) -> dict[str, int]:
    """Each replaced file's :func:`_copy_kept_rows` (``appended``'s keys) in Spark tasks: the copies' URLs and rows."""
    keys = spark.sparkContext.broadcast(_ipc_bytes(dropped))

    def copy(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        wanted = pa.ipc.open_stream(keys.value).read_all()
        for batch in batches:
            pairs = zip(batch.column("path").to_pylist(), batch.column("appended").to_pylist(), strict=True)
            for path, others in pairs:
                if (copied := _copy_kept_rows(path, others, target, schema, wanted, endpoint)) is not None:
                    yield pa.RecordBatch.from_pydict({"path": [copied[0]], "rows": [copied[1]]})

    # The files split evenly across at most defaultParallelism tasks, as reading splits them (table_reader).
    count = max(1, min(len(appended), spark.sparkContext.defaultParallelism))
    tasks = spark.sparkContext.parallelize(sorted(appended.items()), count)
    try:
        copies = spark.createDataFrame(tasks, "path string, appended array<string>").mapInArrow(
            copy, "path string, rows long"
        )
        return {str(row["path"]): int(row["rows"]) for row in copies.collect()}
    finally:
        keys.destroy()


def files_in_partitions_of(table: Table, keys: pa.Table) -> list[str] | None:
    """The live data files of ``table`` in the partitions that rows with these ``keys`` (key columns by name) belong
    to, found from the manifests alone; None when the table's partitioning is not a bucket of key columns (its files
    must then be read to find the keys). A file found may hold none of the keys: rewriting it copies it whole."""
    schema = table.schema()
    sources = [(field, schema.find_field(field.source_id)) for field in table.spec().fields]
    if not sources or any(
        str(field.transform).split("[")[0] != "bucket" or source.name not in keys.column_names
        for field, source in sources
    ):
        return None
    columns = [
        bucket_values(field.transform, source.field_type, keys.column(source.name).combine_chunks()).to_pylist()
        for field, source in sources
    ]
    wanted = set(zip(*columns, strict=True))
    return sorted(path for path, file in live_data_files(table).items() if _partition_key(file) in wanted)


def _partition_key(file: DataFile) -> tuple[Any, ...]:
    # The values alone: cdp tables keep the spec they were created with (a new partitioning means a new table).
    return tuple(file.partition[index] for index in range(len(file.partition)))


def _ipc_bytes(frame: pa.Table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, frame.schema) as writer:
        writer.write_table(frame)
    return bytes(sink.getvalue())


#: Up to this many rows in the replaced files, :func:`rewrite_keeping_rows` copies them on the driver.
COPY_ON_DRIVER_ROWS = 250_000

#: Rows per row group of a copy: batches are gathered up to this many, so appending a run's few rows adds no small
#: row group, and a task holds at most this many decoded rows.
COPY_ROW_GROUP_ROWS = 131_072


def _copy_kept_rows(
    path: str, appended: Sequence[str], target: str, schema: pa.Schema, dropped: pa.Table, endpoint: str | None
) -> tuple[str, int] | None:
    """One copy of :func:`rewrite_keeping_rows`: ``path``'s kept rows, then every row of ``appended``, in one new
    file under ``target`` with the table's columns (``schema``); its URL and rows, or None if it would have none."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def opened(url: str) -> pq.ParquetFile:
        store = ObjectStore(url, s3_endpoint_url=endpoint, setting="processed_url")
        return pq.ParquetFile(stack.enter_context(store.fs.open_input_file(store.fs_path())))

    with contextlib.ExitStack() as stack:
        source, others = opened(path), [opened(url) for url in appended]
        present = [name for name in dropped.column_names if name in source.schema_arrow.names]
        keep = pc.invert(key_matches(conformed(source.read(columns=present), dropped.schema), dropped))
        rows = pc.sum(keep).as_py() or 0
        rows += sum(other.metadata.num_rows for other in others)
        if rows == 0:
            return None
        url = f"{target}/{uuid.uuid4().hex}.parquet"
        out = ObjectStore(url, s3_endpoint_url=endpoint, setting="processed_url")
        if not out.is_s3:
            out.fs.create_dir(out.fs_path().rsplit("/", 1)[0], recursive=True)
        sink = stack.enter_context(out.fs.open_output_stream(out.fs_path()))
        writer = stack.enter_context(pq.ParquetWriter(sink, schema, compression="snappy"))
        gathered: list[pa.Table] = []
        for batch in _kept_batches(source, keep, others):
            gathered.append(conformed(pa.Table.from_batches([batch]), schema))
            if sum(part.num_rows for part in gathered) >= COPY_ROW_GROUP_ROWS:  # A few batches: cheap to add up.
                writer.write_table(pa.concat_tables(gathered), row_group_size=COPY_ROW_GROUP_ROWS)
                gathered = []
        if gathered:
            writer.write_table(pa.concat_tables(gathered), row_group_size=COPY_ROW_GROUP_ROWS)
    return url, rows


def _kept_batches(
    source: pq.ParquetFile, keep: pa.BooleanArray, others: Sequence[pq.ParquetFile]
) -> Iterator[pa.RecordBatch]:
    """``source``'s rows where ``keep``, then every row of ``others``, in batches; never an empty one (an empty row
    group has no statistics, and Iceberg takes the partition from them)."""
    offset = 0
    for batch in source.iter_batches(batch_size=COPY_ROW_GROUP_ROWS // 4):
        kept = batch.filter(keep.slice(offset, batch.num_rows))
        offset += batch.num_rows
        if kept.num_rows:
            yield kept
    for other in others:
        yield from (batch for batch in other.iter_batches(batch_size=COPY_ROW_GROUP_ROWS // 4) if batch.num_rows)


def conformed(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with ``schema``'s columns in its order and types; a column it lacks (added to the table after the
    file was written) as nulls, as Spark's reader gives it."""
    import pyarrow as pa

    columns = [
        rows[field.name].cast(field.type)
        if field.name in rows.column_names
        else pa.chunked_array([pa.nulls(rows.num_rows, field.type)])
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def key_matches(rows: pa.Table, keys: pa.Table) -> pa.BooleanArray:
    """For each row of ``rows``, whether its key (``keys``' columns) is one of ``keys``' rows, a null equal to a null
    as in Spark's ``<=>``: each key part joins as its null flag and its value with nulls filled by one of the keys'
    values, so that Arrow's hash join, where nulls never match, can be used."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    left: dict[str, Any] = {}
    right: dict[str, Any] = {}
    for index, name in enumerate(keys.column_names):
        mine, theirs = rows[name], keys[name].cast(rows[name].type)
        left[f"null_{index}"] = pc.is_null(mine).cast(pa.int8())
        right[f"null_{index}"] = pc.is_null(theirs).cast(pa.int8())
        present = theirs.drop_null()
        if len(present):  # Otherwise only null keys are wanted: the flag alone decides.
            left[f"value_{index}"] = pc.fill_null(mine, present[0])
            right[f"value_{index}"] = pc.fill_null(theirs, present[0])
    positions = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    found = pa.table({**left, "_row": positions}).join(pa.table(right), keys=list(right), join_type="left semi")
    return pc.is_in(positions, value_set=found["_row"].combine_chunks())


# -- committing ---------------------------------------------------------------------------------------------------


def live_data_files(table: Table, snapshot_id: int | None = None) -> dict[str, DataFile]:
    """The data files of a snapshot (the current one by default), by URL.

    Every reader and writer of cdp plans its files here. cdp commits whole files only (appends and file-level
    replaces); a snapshot whose data files have row-level delete files, as an engine writing merge-on-read leaves
    (Spark with the Iceberg runtime and ``write.merge.mode=merge-on-read``, Flink, Trino), raises
    :class:`RowLevelDeletesError` instead of being read as if those rows were still there.
    """
    if table.current_snapshot() is None and snapshot_id is None:
        return {}
    try:
        tasks = list(table.scan(snapshot_id=snapshot_id).plan_files())
    except ValueError:  # pyiceberg 0.12 refuses to plan a snapshot with equality deletes.
        if _has_equality_deletes(table, snapshot_id):
            raise RowLevelDeletesError(_row_level_deletes_message(table, "equality delete files")) from None
        raise
    if deleted := [task for task in tasks if task.delete_files]:
        # "position delete", "equality delete" (should pyiceberg come to plan those).
        kinds = sorted({d.content.name.lower().replace("_deletes", " delete") for t in deleted for d in t.delete_files})
        what = f"{' and '.join(kinds)} files on {len(deleted)} of its {len(tasks)} data files"
        raise RowLevelDeletesError(_row_level_deletes_message(table, what))
    return {task.file.file_path: task.file for task in tasks}


def _has_equality_deletes(table: Table, snapshot_id: int | None) -> bool:
    from pyiceberg.manifest import DataFileContent, ManifestContent

    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot is None:
        return False
    return any(
        entry.data_file.content == DataFileContent.EQUALITY_DELETES
        for manifest in snapshot.manifests(table.io)
        if manifest.content == ManifestContent.DELETES
        for entry in manifest.fetch_manifest_entry(table.io)
    )


def _row_level_deletes_message(table: Table, what: str) -> str:
    name = ".".join(table.name())
    return (
        f"table {name} has {what} (row-level deletes written by another engine), which cdp does not apply; "
        "have that engine apply them and drop them (Spark: CALL <catalog>.system.rewrite_data_files(table => ..., "
        "options => map('delete-file-threshold', '1', 'remove-dangling-deletes', 'true'))), then run again"
    )


def processed_raw_files(table: Table, snapshot_id: int | None = None) -> frozenset[str]:
    """Every raw-zone key the table had processed as of a snapshot (the current one by default)."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if PROCESSED_FILES_PROPERTY in summary:
            with table.io.new_input(summary[PROCESSED_FILES_PROPERTY]).open() as stream:
                return frozenset(orjson.loads(gzip.decompress(stream.read())))
        # A snapshot made by another writer (compaction, expiry) carries nothing: its parent's list still holds.
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return frozenset()


def commit_files(
    table: Table,
    *,
    add: Sequence[str],
    remove: Iterable[str] = (),
    raw_files: Iterable[str] = (),
    properties: Mapping[str, str] | None = None,
) -> CommitResult:
    """Commit ``add`` (data files written by :func:`write_data_files`) and drop ``remove``, in one snapshot.

    ``raw_files`` are the raw-zone keys this output was computed from; the snapshot records them with every key
    processed before. Without ``remove`` the snapshot is an append, otherwise an overwrite (a file-level replace).
    """
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table import TableProperties

    name = ".".join(table.name())
    if any(table.properties.get(key) != value for key, value in NO_COMMIT_RETRIES.items()):
        with table.transaction() as settings:  # A table created elsewhere: no retries before our first commit.
            settings.set_properties(NO_COMMIT_RETRIES)
    before = processed_raw_files(table)
    processed = before | set(raw_files)
    summary = dict(properties or {})
    summary[PROCESSED_FILES_PROPERTY] = _write_processed_list(table, processed)
    summary[PROCESSED_COUNT_PROPERTY] = str(len(processed))
    summary[PROCESSED_ADDED_PROPERTY] = str(len(processed - before))
    to_remove = sorted(set(remove))
    live = live_data_files(table) if to_remove else {}
    if missing := [path for path in to_remove if path not in live]:
        raise CommitError(f"table {name}: cannot replace {missing[0]}: it is not in the current snapshot")
    new_files = [data_file(table.io, table.metadata, path) for path in add]
    try:
        with table.transaction() as transaction:
            if transaction.table_metadata.name_mapping() is None:
                mapping = transaction.table_metadata.schema().name_mapping.model_dump_json()
                transaction.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping})
            update = transaction.update_snapshot(snapshot_properties=summary)
            producer = update.overwrite() if to_remove else update.fast_append()
            with producer:
                for path in to_remove:
                    producer.delete_data_file(live[path])
                for new in new_files:
                    producer.append_data_file(new)
    except CommitFailedException as exc:
        raise CommitError(f"table {name} changed while committing ({exc}); run the transform again") from exc
    snapshot = table.current_snapshot()
    assert snapshot is not None  # We just committed one.
    result = CommitResult(
        snapshot_id=snapshot.snapshot_id,
        operation="overwrite" if to_remove else "append",
        added_files=len(new_files),
        removed_files=len(to_remove),
        processed_raw_files=len(processed),
    )
    log_event(logger, "table_committed", table=name, **result.__dict__)
    return result


def _write_processed_list(table: Table, processed: Iterable[str]) -> str:
    # Named .gzip, not .gz: pyarrow's file IO would gzip a .gz file a second time.
    location = f"{table.location().rstrip('/')}/metadata/cdp-processed-{uuid.uuid4().hex}.json.gzip"
    with table.io.new_output(location).create(overwrite=False) as stream:
        stream.write(gzip.compress(orjson.dumps(sorted(processed)), compresslevel=6))
    return location


def data_file(io: FileIO, metadata: TableMetadata, path: str) -> DataFile:
    """The Iceberg description of one Parquet file written for the table: statistics and its partition.

    The partition comes from the file's own values (each file holds one partition, see :func:`write_data_files`),
    through the transform itself: pyiceberg's ``add_files`` cannot infer bucket partitions from min/max.
    """
    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.partitioning import partition_record_value
    from pyiceberg.typedef import Record

    input_file = io.new_input(path)
    with input_file.open() as stream:
        parquet_metadata = pq.read_metadata(stream)
    schema = metadata.schema()
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=parquet_metadata,
        stats_columns=compute_statistics_plan(schema, metadata.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(schema),
    )
    values: list[Any] = []
    for field in metadata.spec().fields:
        aggregate = statistics.column_aggregates.get(field.source_id)
        if aggregate is None or aggregate.current_min is None:
            values.append(None)
            continue
        source_type = schema.find_field(field.source_id).field_type
        value = partition_record_value(field, aggregate.current_min, schema)
        values.append(field.transform.transform(source_type)(value))
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=Record(*values),
        file_size_in_bytes=len(input_file),
        sort_order_id=None,
        spec_id=metadata.default_spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )
