"""Spark writes Parquet, pyiceberg commits it: appends, one-snapshot replaces, the processed-files record, partitions,
time travel and a crash between writing and committing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.table import TableProperties
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    TimestamptzType,
)
from pyspark.sql import functions as F

from plugins.core.errors import ConfigError
from plugins.transforms import commit
from plugins.transforms.catalog import (
    CatalogError,
    ProcessedZone,
    create_table,
    load_table,
    partition_field,
    sqlalchemy_url,
    table_identifier,
)
from plugins.transforms.commit import (
    PROCESSED_ADDED_PROPERTY,
    CommitError,
    bucket_values,
    commit_files,
    files_in_partitions_of,
    key_matches,
    live_data_files,
    processed_raw_files,
    rewrite_keeping_rows,
    write_data_files,
)
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_data_files, read_table
from tests.conftest import REPO_ROOT

SCHEMA_DDL = "customer_id string, email string, updated_at timestamp, total decimal(38,9)"


@pytest.fixture(params=["local", "s3"])
def zone(request: pytest.FixtureRequest, tmp_path: Path) -> ProcessedZone:
    """A processed zone with its SQLite catalog, once on a local folder and once on S3 (moto)."""
    warehouse = str(tmp_path / "processed") if request.param == "local" else request.getfixturevalue("s3_url")
    return ProcessedZone.resolve(warehouse, f"sqlite:///{tmp_path / 'catalog.db'}")


def customers(spark, rows):
    return spark.createDataFrame([(*row[:3], Decimal(row[3])) for row in rows], SCHEMA_DDL)


def at(day: int) -> datetime:
    return datetime(2026, 1, day, 12, tzinfo=UTC)


def test_an_append_then_a_replace_commit_one_snapshot_each_and_time_travel_reads_the_old_rows(spark, zone) -> None:
    catalog = zone.open()
    first = customers(spark, [("c1", "a@x.io", at(1), 10), ("c2", "b@x.io", at(2), 20)])
    table = create_table(catalog, "acme", "customers", first.schema)

    appended = commit_files(table, add=write_data_files(first, table), raw_files=["acme/stripe/k1", "acme/stripe/k2"])
    old_files = list(live_data_files(table))
    merged = customers(spark, [("c1", "a@x.io", at(1), 10), ("c2", "b2@x.io", at(3), 25), ("c3", None, at(3), 5)])
    replaced = commit_files(table, add=write_data_files(merged, table), remove=old_files, raw_files=["acme/stripe/k3"])

    table = load_table(zone.open(), "acme", "customers")
    assert [s.snapshot_id for s in table.snapshots()] == [appended.snapshot_id, replaced.snapshot_id]
    assert (appended.operation, replaced.operation) == ("append", "overwrite")
    assert replaced.removed_files == len(old_files)
    assert not set(old_files) & set(live_data_files(table))  # Removed and added in the same snapshot.
    current = {r["customer_id"]: r["email"] for r in table.scan().to_arrow().to_pylist()}
    assert current == {"c1": "a@x.io", "c2": "b2@x.io", "c3": None}
    before = table.scan(snapshot_id=appended.snapshot_id).to_arrow().to_pylist()
    assert {r["customer_id"]: r["email"] for r in before} == {"c1": "a@x.io", "c2": "b@x.io"}
    assert processed_raw_files(table) == {"acme/stripe/k1", "acme/stripe/k2", "acme/stripe/k3"}
    assert processed_raw_files(table, appended.snapshot_id) == {"acme/stripe/k1", "acme/stripe/k2"}
    assert table.current_snapshot().summary[PROCESSED_ADDED_PROPERTY] == "1"


def test_data_files_are_snappy_parquet_with_microsecond_utc_timestamps(spark, zone) -> None:
    frame = customers(spark, [("c1", "a@x.io", datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)
    commit_files(table, add=write_data_files(frame, table))

    for path in live_data_files(table):
        with table.io.new_input(path).open() as stream:
            parquet = pq.ParquetFile(stream)
            column = parquet.schema_arrow.field("updated_at")
            assert str(column.type) == "timestamp[us, tz=UTC]"
            assert parquet.metadata.row_group(0).column(0).compression == "SNAPPY"
    assert table.scan().to_arrow().column("updated_at").to_pylist()[0].microsecond == 123456
    if zone.warehouse.startswith("file:"):  # Only data files in the table's folder: no markers, no checksums.
        folder = Path(zone.warehouse.removeprefix("file://")) / "acme" / "customers" / "data"
        assert {p.suffix for p in folder.rglob("*") if p.is_file()} == {".parquet"}


def test_each_data_file_holds_one_iceberg_partition_of_a_bucket_and_month_spec(spark, zone) -> None:
    rows = [
        (f"cust-{i:04d}-long-enough-to-pass-stats-truncation", None, at(1 + i % 28).replace(month=1 + i % 3), i)
        for i in range(60)
    ]
    frame = customers(spark, rows)
    table = create_table(
        zone.open(), "acme", "customers", frame.schema, ["bucket(4, customer_id)", "month(updated_at)"]
    )

    commit_files(table, add=write_data_files(frame, table))

    bucket = BucketTransform(4).transform(StringType())
    files = live_data_files(table)
    assert len(files) > 1
    for data_file in files.values():
        with table.io.new_input(data_file.file_path).open() as stream:
            found = pq.read_table(stream).to_pylist()
        assert {bucket(r["customer_id"]) for r in found} == {data_file.partition[0]}
        assert {(r["updated_at"].year - 1970) * 12 + r["updated_at"].month - 1 for r in found} == {
            data_file.partition[1]
        }
    assert table.scan().count() == 60
    one = rows[7][0]
    pruned = table.scan(row_filter=f"customer_id == '{one}'")
    assert [task.file.partition[0] for task in pruned.plan_files()] == [bucket(one)] * len(list(pruned.plan_files()))


@pytest.mark.parametrize("copied_on", ["driver", "executors"])
def test_a_rewrite_copies_kept_rows_and_appends_the_new_files_so_no_partition_gains_a_file(
    spark, zone, monkeypatch, copied_on
) -> None:
    if copied_on == "executors":  # Small files are copied on the driver; past the threshold in Spark tasks.
        monkeypatch.setattr(commit, "COPY_ON_DRIVER_ROWS", 0)
    bucket = BucketTransform(4).transform(StringType())
    rows = [(f"cust-{i:02d}", f"{i}@x.io", at(1 + i % 28).replace(microsecond=i), i) for i in range(40)]
    frame = customers(spark, rows)
    table = create_table(zone.open(), "acme", "customers", frame.schema, ["bucket(4, customer_id)"])
    commit_files(table, add=write_data_files(frame, table))
    by_bucket = {data_file.partition[0]: path for path, data_file in live_data_files(table).items()}
    assert sorted(by_bucket) == [0, 1, 2, 3]
    # Buckets 0-2 are replaced (bucket 0 loses every row), bucket 3 is not; new rows land in every bucket.
    replaced = [by_bucket[0], by_bucket[1], by_bucket[2]]
    emptied = [r[0] for r in rows if bucket(r[0]) == 0]
    dropped = {*emptied, *[r[0] for r in rows if bucket(r[0]) == 1][:2], "cust-99"}
    new_rows = [(f"new-{i:02d}", None, at(5), 100 + i) for i in range(12)]
    assert {bucket(r[0]) for r in new_rows} == {0, 1, 2, 3}
    with table.transaction() as transaction:  # A column added since the old files were written, as the runner adds.
        with transaction.update_schema() as update:
            update.add_column("tier", StringType())
        mapping = transaction.table_metadata.schema().name_mapping.model_dump_json()
        transaction.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping})
    written = write_data_files(customers(spark, new_rows).withColumn("tier", F.lit("gold")), table)

    rewritten = rewrite_keeping_rows(
        spark, table, replaced, written, pa.table({"customer_id": sorted(dropped)}), run_id="r1"
    )
    commit_files(table, add=sorted(rewritten), remove=replaced)

    table = load_table(zone.open(), "acme", "customers")
    found = table.scan().to_arrow().to_pylist()
    wanted = [r for r in rows if r[0] not in dropped] + new_rows
    assert {r["customer_id"]: (r["updated_at"], r["total"], r["tier"]) for r in found} == {
        r[0]: (r[2], Decimal(r[3]), "gold" if r[0].startswith("new-") else None) for r in wanted
    }
    # Spark reads the same, S3 included: there a file written before the column was added (bucket 3's) reads it null.
    read_back = {r["customer_id"]: r["tier"] for r in read_table(spark, table).collect()}
    assert read_back == {r["customer_id"]: r["tier"] for r in found}
    not_replaced = len([r for r in rows if bucket(r[0]) == 3])
    assert len(found) == len(wanted) == sum(rewritten.values()) + not_replaced
    live = live_data_files(table)
    per_bucket = sorted(data_file.partition[0] for data_file in live.values())
    assert per_bucket == [0, 1, 2, 3, 3]  # Bucket 3's new file stands beside its old one, which was not replaced.
    for data_file in live.values():
        with table.io.new_input(data_file.file_path).open() as stream:
            parquet = pq.ParquetFile(stream)
            assert parquet.metadata.row_group(0).column(0).compression == "SNAPPY"
            assert parquet.metadata.num_row_groups == 1  # The appended rows are gathered with the kept ones.
            if "/data/kept-r1/" in data_file.file_path:  # The table's columns, the old rows' tier null.
                assert parquet.schema_arrow.names == ["customer_id", "email", "updated_at", "total", "tier"]
            assert str(parquet.schema_arrow.field("updated_at").type) == "timestamp[us, tz=UTC]"
            assert {bucket(v) for v in parquet.read().column("customer_id").to_pylist()} == {data_file.partition[0]}
    appended = [path for path in written if path not in rewritten]
    assert len(appended) == 3
    assert not any(table.io.new_input(path).exists() for path in appended)


@pytest.mark.parametrize(
    ("source_type", "values"),
    [
        (IntegerType(), pa.array([1, -3, None, 127], pa.int8())),  # Spark's byte: stored by Iceberg as int
        (IntegerType(), pa.array([1, -300, None], pa.int16())),  # Spark's short
        (IntegerType(), pa.array([1, -3, None], pa.int32())),
        (LongType(), pa.array([1, -3, None, 2**40], pa.int64())),
        (StringType(), pa.array(["cus_0a", "é", "", None])),
        (DateType(), pa.array([date(2020, 1, 2), None])),
        (TimestamptzType(), pa.array([datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=UTC), None], pa.timestamp("us", "UTC"))),
        (DecimalType(10, 2), pa.array([Decimal("1.23"), Decimal("-0.01"), None], pa.decimal128(10, 2))),
        (BinaryType(), pa.array([b"ab", b"", None])),
    ],
)
def test_bucket_values_are_pyicebergs_bucket_of_each_value(source_type, values) -> None:
    """The vectorised bucket (pyiceberg-core) gives what pyiceberg's own transform gives value by value."""
    transform = BucketTransform(16)
    one_by_one = transform.transform(source_type)
    expected = [None if value is None else one_by_one(value) for value in values.to_pylist()]
    assert bucket_values(transform, source_type, values).to_pylist() == expected


def test_the_files_of_keys_buckets_come_from_the_manifests_and_other_partitionings_say_so(spark, zone) -> None:
    rows = [(f"cust-{i:02d}", f"{i}@x.io", at(1), i) for i in range(40)]
    frame = customers(spark, rows)
    bucketed = create_table(zone.open(), "acme", "customers", frame.schema, ["bucket(4, customer_id)"])
    commit_files(bucketed, add=write_data_files(frame, bucketed))
    commit_files(bucketed, add=write_data_files(customers(spark, rows[:3]), bucketed))  # A second file per bucket.
    holding = read_table(spark, bucketed).select("customer_id", DATA_FILE_COLUMN).collect()
    keys = ["cust-01", "cust-07", "nobody"]
    bucket = BucketTransform(4).transform(StringType())
    wanted = {bucket(key) for key in keys}

    found = files_in_partitions_of(bucketed, pa.table({"customer_id": keys, "other": [1, 2, 3]}))

    assert found == sorted(path for path, file in live_data_files(bucketed).items() if file.partition[0] in wanted)
    assert {row[DATA_FILE_COLUMN] for row in holding if row["customer_id"] in keys} <= set(found)
    assert files_in_partitions_of(bucketed, pa.table({"customer_id": pa.array([], pa.string())})) == []
    plain = create_table(zone.open(), "acme", "plain", frame.schema)
    by_day = create_table(zone.open(), "acme", "by_day", frame.schema, ["day(updated_at)"])
    for table in (plain, by_day):
        assert files_in_partitions_of(table, pa.table({"customer_id": keys, "updated_at": [at(1)] * 3})) is None
    assert files_in_partitions_of(bucketed, pa.table({"email": ["1@x.io"]})) is None  # Not the bucket's column.


def test_key_matches_compares_keys_null_safely_on_every_part() -> None:
    rows = pa.table(
        {
            "customer_id": ["a", "a", "b", None, None, "c"],
            "currency": ["usd", None, None, "eur", None, "usd"],
        }
    )
    keys = pa.table(
        {"customer_id": pa.array(["a", "b", None, "z"], pa.large_string()), "currency": [None, None, None, "usd"]}
    )

    assert key_matches(rows, keys).to_pylist() == [False, True, True, False, True, False]
    only_nulls = pa.table({"customer_id": ["c"], "currency": pa.array([None], pa.string())})
    assert key_matches(rows, only_nulls).to_pylist() == [False] * 6
    assert key_matches(rows, pa.table({"customer_id": ["c", None]})).to_pylist() == [
        False, False, False, True, True, True
    ]  # fmt: skip
    assert key_matches(rows, rows.slice(0, 0)).to_pylist() == [False] * 6


def test_replacing_a_file_the_table_does_not_hold_is_refused(spark, tmp_path) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    frame = customers(spark, [("c1", "a@x.io", at(1), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)
    commit_files(table, add=write_data_files(frame, table))
    with pytest.raises(CommitError, match="not in the current snapshot"):
        commit_files(table, add=[], remove=["file:///nowhere/part-0.parquet"])


def test_a_commit_on_a_table_changed_by_another_writer_is_refused_and_changes_nothing(spark, tmp_path) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    frame = customers(spark, [("c1", "a@x.io", at(1), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)
    stale = load_table(zone.open(), "acme", "customers")
    files = write_data_files(frame, table)
    winner = commit_files(table, add=files[:1], raw_files=["acme/stripe/k1"])

    with pytest.raises(CommitError, match="changed while committing"):
        commit_files(stale, add=write_data_files(frame, stale), raw_files=["acme/stripe/k2"])

    current = load_table(zone.open(), "acme", "customers")
    assert current.current_snapshot().snapshot_id == winner.snapshot_id
    assert processed_raw_files(current) == {"acme/stripe/k1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("month(updated_at)", ("updated_at", "month")),
        ("bucket(16, customer_id)", ("customer_id", "bucket[16]")),
        ("plan", ("plan", "identity")),
        ("truncate(3,zip)", ("zip", "truncate[3]")),
    ],
)
def test_partitioning_reads_the_transform_notation(text, expected) -> None:
    assert partition_field(text) == expected


@pytest.mark.parametrize("text", ["bucket(customer_id)", "month(3, x)", "shuffle(x)", "a b"])
def test_a_malformed_partitioning_is_a_config_error(text) -> None:
    with pytest.raises(ConfigError, match="partitioning"):
        partition_field(text)


def test_the_catalog_url_selects_psycopg_for_postgresql() -> None:
    assert sqlalchemy_url("postgresql://cdp:pw@db:5432/cdp") == "postgresql+psycopg://cdp:pw@db:5432/cdp"
    assert sqlalchemy_url("sqlite:////tmp/c.db") == "sqlite:////tmp/c.db"
    with pytest.raises(ConfigError, match="catalog_url"):
        sqlalchemy_url("mysql://db/cdp")


def test_an_unreachable_catalog_is_named_without_its_credentials(tmp_path) -> None:
    # libpq takes the password in the user info or as a query parameter; neither may reach a message.
    url = "postgresql://cdp:hunter2@127.0.0.1:1/cdp?sslmode=disable&password=swordfish"
    with pytest.raises(CatalogError) as failure:
        ProcessedZone.resolve(str(tmp_path / "processed"), url).open()
    message = str(failure.value)
    assert "127.0.0.1:1/cdp" in message
    assert "hunter2" not in message
    assert "swordfish" not in message


def test_a_postgresql_catalog_commits_and_lists_the_tenant_namespace(spark, tmp_path, postgres_url) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), postgres_url)
    frame = customers(spark, [("c1", "a@x.io", at(1), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)
    commit_files(table, add=write_data_files(frame, table), raw_files=["acme/stripe/k1"])

    again = zone.open()
    assert ("acme",) in again.list_namespaces()
    assert load_table(again, "acme", "customers").scan().count() == 1


CRASHING_RUN = """
import sys, time
from datetime import datetime, UTC
from decimal import Decimal
from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.commit import commit_files, write_data_files
from plugins.transforms.spark import spark_session
zone = ProcessedZone.resolve(sys.argv[1], sys.argv[2])
table = load_table(zone.open(), "acme", "customers")
spark = spark_session("local[1]", conf={"spark.ui.enabled": "false"})
frame = spark.createDataFrame([("c9", "z@x.io", datetime(2026, 1, 9, tzinfo=UTC), Decimal(9))], "{ddl}")
files = write_data_files(frame, table)
print("written", len(files), flush=True)
time.sleep(600)  # Killed here: the files exist, the commit never happens.
commit_files(table, add=files, raw_files=["acme/stripe/k9"])
""".replace("{ddl}", SCHEMA_DDL)


def test_a_crash_between_writing_and_committing_leaves_the_previous_snapshot_and_the_next_run_completes(
    spark, tmp_path
) -> None:
    processed, catalog_url = str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}"
    zone = ProcessedZone.resolve(processed, catalog_url)
    frame = customers(spark, [("c1", "a@x.io", at(1), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)
    first = commit_files(table, add=write_data_files(frame, table), raw_files=["acme/stripe/k1"])

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, processed, catalog_url],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert run.stdout is not None
        line = run.stdout.readline()  # Blocks until the files are written (or the run dies).
        assert line.startswith("written"), f"the run ended before writing: {run.wait()}"
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)

    table = load_table(zone.open(), "acme", "customers")
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    assert [r["customer_id"] for r in table.scan().to_arrow().to_pylist()] == ["c1"]
    assert processed_raw_files(table) == {"acme/stripe/k1"}
    orphans = [p for p in Path(processed).rglob("*.parquet") if p.as_uri() not in live_data_files(table)]
    assert orphans  # The crashed run's files exist but no snapshot references them.

    rerun = customers(spark, [("c9", "z@x.io", at(9), 9)])
    commit_files(table, add=write_data_files(rerun, table), raw_files=["acme/stripe/k9"])
    table = load_table(zone.open(), "acme", "customers")
    assert sorted(r["customer_id"] for r in table.scan().to_arrow().to_pylist()) == ["c1", "c9"]
    assert processed_raw_files(table) == {"acme/stripe/k1", "acme/stripe/k9"}


def test_spark_reads_a_snapshot_back_with_each_rows_data_file_and_a_merge_replaces_only_those_files(
    spark, zone
) -> None:
    rows = [(f"c{i}", f"{i}@x.io", at(1 + i), i) for i in range(6)]
    frame = customers(spark, rows)
    table = create_table(zone.open(), "acme", "customers", frame.schema, ["bucket(3, customer_id)"])
    first = commit_files(table, add=write_data_files(frame, table))

    # A merge: the files holding the changed key are read, rewritten with the change, and replaced in one snapshot.
    current = read_table(spark, table)
    touched = sorted({r[DATA_FILE_COLUMN] for r in current.where("customer_id = 'c2'").collect()})
    assert len(touched) == 1
    assert touched[0] in live_data_files(table)
    affected = read_data_files(spark, table, touched).drop(DATA_FILE_COLUMN)
    rewritten = affected.withColumn(
        "email", F.when(F.col("customer_id") == "c2", F.lit("new@x.io")).otherwise(F.col("email"))
    )
    merged = commit_files(table, add=write_data_files(rewritten, table), remove=touched)

    assert merged.removed_files == 1
    after = {r["customer_id"]: r["email"] for r in read_table(spark, table).collect()}
    assert after == {**{f"c{i}": f"{i}@x.io" for i in range(6)}, "c2": "new@x.io"}
    before = {r["customer_id"]: r["email"] for r in read_table(spark, table, first.snapshot_id).collect()}
    assert before["c2"] == "2@x.io"
    assert len(live_data_files(table)) == len(live_data_files(table, first.snapshot_id))


def test_an_output_without_a_table_column_is_refused_before_writing(spark, tmp_path) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    frame = customers(spark, [("c1", "a@x.io", at(1), 1)])
    table = create_table(zone.open(), "acme", "customers", frame.schema)

    with pytest.raises(CommitError, match=r"lacks column\(s\) email"):
        write_data_files(frame.drop("email"), table)
    assert not list((tmp_path / "processed").rglob("*.parquet"))


def test_a_table_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be lower-case letters"):
        table_identifier("acme", "customers\n")
