"""`cdp tables`: list, show, history, rollback, compact and expire on real Iceberg tables written by real Spark."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from plugins.cli.app import main
from plugins.core.raw_zone import RawZoneWriter
from plugins.core.storage import ObjectStore
from plugins.transforms.catalog import ProcessedZone, create_table, load_table
from plugins.transforms.commit import CommitError, commit_files, live_data_files, processed_raw_files, write_data_files
from plugins.transforms.maintenance import (
    MAX_TARGET_FILE_SIZE,
    MIN_TARGET_FILE_SIZE,
    QUALITY_PROPERTY,
    compact,
    expire,
    parse_file_size,
    plan_compaction,
    rollback,
)
from plugins.transforms.raw_reader import pending_raw_files
from plugins.transforms.table_reader import read_table

SCHEMA_DDL = "customer_id string, email string, updated_at timestamp"


@pytest.fixture
def zone(tmp_path: Path) -> ProcessedZone:
    return ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture
def zone_args(zone: ProcessedZone) -> list[str]:
    return ["--processed-url", zone.warehouse, "--catalog-url", zone.catalog_url]


def frame(spark: Any, ids: range, email: str = "x") -> Any:
    day = datetime(2026, 1, 1, tzinfo=UTC)
    return spark.createDataFrame([(f"c{i}", f"{email}{i}@x.io", day) for i in ids], SCHEMA_DDL)


def cdp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(table: Any) -> list[tuple[Any, ...]]:
    return sorted(tuple(row.values()) for row in table.scan().to_arrow().to_pylist())


# -- list, show, history ------------------------------------------------------------------------------------------


def test_list_show_and_history_describe_the_tables_and_their_snapshots(spark, zone, zone_args, capsys) -> None:
    catalog = zone.open()
    first = frame(spark, range(3))
    customers = create_table(catalog, "acme", "customers", first.schema, ["bucket(4, customer_id)"])
    one = commit_files(customers, add=write_data_files(first, customers), raw_files=["acme/stripe/k1"])
    report = {"rejected_by_rule": {"required(email)": 2}, "nulled": {}, "counters": {"identity.shared_value": 1}}
    two = commit_files(
        customers,
        add=write_data_files(frame(spark, range(3, 5)), customers),
        raw_files=["acme/stripe/k2"],
        properties={QUALITY_PROPERTY: json.dumps(report), "cdp.rows-in": "4"},
    )
    other = create_table(catalog, "globex", "orders", first.schema)
    commit_files(other, add=write_data_files(first, other))

    code, out, _ = cdp(capsys, "tables", "list", *zone_args, "--json")
    assert code == 0
    listed = {(t["tenant"], t["table"]): t for t in json.loads(out)["tables"]}
    assert set(listed) == {("acme", "customers"), ("globex", "orders")}
    acme = listed[("acme", "customers")]
    assert (acme["rows"], acme["snapshot_id"]) == (5, two.snapshot_id)
    assert acme["files"] == len(live_data_files(customers))
    assert acme["size_bytes"] > 0
    assert acme["committed_at"]
    code, out, _ = cdp(capsys, "tables", "list", "--tenant", "globex", *zone_args, "--json")
    assert [t["table"] for t in json.loads(out)["tables"]] == ["orders"]

    code, out, _ = cdp(capsys, "tables", "show", "acme.customers", *zone_args, "--json")
    shown = json.loads(out)
    assert shown["columns"] == [
        {"name": "customer_id", "type": "string", "required": False},
        {"name": "email", "type": "string", "required": False},
        {"name": "updated_at", "type": "timestamptz", "required": False},
    ]
    assert shown["partitioning"] == ["bucket[4](customer_id)"]
    assert shown["properties"]["commit.retry.num-retries"] == "0"
    assert shown["location"].endswith("/acme/customers")
    assert shown["processed_raw_files"] == 2
    assert shown["quality"]["report"] == report
    assert shown["quality"]["snapshot_id"] == two.snapshot_id
    code, out, _ = cdp(capsys, "tables", "show", "acme.customers", *zone_args)
    assert code == 0
    assert "processed raw files: 2" in out
    assert "required(email): 2" in out

    code, out, _ = cdp(capsys, "tables", "history", "acme.customers", *zone_args, "--json")
    history = json.loads(out)["snapshots"]
    assert [(s["snapshot_id"], s["parent_id"], s["current"]) for s in history] == [
        (one.snapshot_id, None, False),
        (two.snapshot_id, one.snapshot_id, True),
    ]
    assert (history[1]["operation"], history[1]["added_rows"], history[1]["removed_rows"]) == ("append", 2, 0)
    assert history[1]["cdp"]["cdp.rows-in"] == "4"
    assert history[1]["cdp"]["cdp.processed-raw-files-count"] == "2"
    code, out, _ = cdp(capsys, "tables", "history", "acme.customers", *zone_args)
    marked = [line for line in out.splitlines() if line.startswith("│ * ")]
    assert len(marked) == 1
    assert str(two.snapshot_id) in marked[0]


def test_an_unknown_table_is_one_line_that_suggests_the_names(spark, zone, zone_args, capsys) -> None:
    first = frame(spark, range(1))
    table = create_table(zone.open(), "acme", "customers", first.schema)
    commit_files(table, add=write_data_files(first, table))
    for command in (["show"], ["history"], ["rollback"], ["compact"], ["expire"]):
        extra = {"rollback": ["1"], "expire": ["--older-than", "7d"]}.get(command[0], [])
        code, _, err = cdp(capsys, "tables", *command, "acme.custmers", *extra, *zone_args)
        assert code == 1
        assert len(err.strip().splitlines()) == 1
        assert "no table 'acme.custmers'; did you mean acme.customers?" in err
        assert "'cdp tables list'" in err
    code, _, err = cdp(capsys, "tables", "show", "customers", *zone_args)
    assert (code, len(err.strip().splitlines())) == (1, 1)
    assert "TENANT.TABLE" in err


# -- rollback -----------------------------------------------------------------------------------------------------


def test_a_rollback_rolls_the_processed_raw_files_back_so_the_next_run_reprocesses_what_came_after(
    spark, zone, zone_args, tmp_path, capsys
) -> None:
    raw = ObjectStore(str(tmp_path / "raw"))
    writer = RawZoneWriter(raw, tenant="acme", provider="stripe")
    day = datetime(2026, 1, 1, tzinfo=UTC)
    keys = [writer.write_batch("customers", [{"id": str(i)}], when=day + timedelta(hours=i)).key for i in range(3)]
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    first = commit_files(table, add=write_data_files(frame(spark, range(2)), table), raw_files=keys[:2])
    old_rows = rows_of(table)
    second = commit_files(
        table,
        add=write_data_files(frame(spark, range(2), "new"), table),
        remove=list(live_data_files(table)),
        raw_files=keys[2:],
    )
    assert [raw.key for raw in pending_raw_files(raw, "acme", "stripe", "customers", processed_raw_files(table))] == []

    code, out, _ = cdp(capsys, "tables", "rollback", "acme.customers", str(first.snapshot_id), *zone_args, "--json")
    assert code == 0
    assert json.loads(out) == {
        "table": "acme.customers",
        "previous_snapshot_id": second.snapshot_id,
        "snapshot_id": first.snapshot_id,
        "processed_raw_files_before": 3,
        "processed_raw_files": 2,
    }

    table = load_table(zone.open(), "acme", "customers")
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    assert rows_of(table) == old_rows
    assert processed_raw_files(table) == set(keys[:2])
    # Exactly the raw file committed after the snapshot is pending again: the next run reprocesses it, nothing else.
    pending = pending_raw_files(raw, "acme", "stripe", "customers", processed_raw_files(table))
    assert [raw.key for raw in pending] == keys[2:]
    # The next commit (what the next run does) builds on the rolled-back snapshot and its record.
    third = commit_files(table, add=write_data_files(frame(spark, range(5, 6)), table), raw_files=keys[2:])
    assert table.snapshot_by_id(third.snapshot_id).parent_snapshot_id == first.snapshot_id
    assert processed_raw_files(table) == set(keys)
    # The snapshot a rollback left behind can be made current again.
    rollback(table, second.snapshot_id)
    assert load_table(zone.open(), "acme", "customers").current_snapshot().snapshot_id == second.snapshot_id


def test_a_rollback_to_an_unknown_snapshot_is_refused_in_one_line(spark, zone, zone_args, capsys) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    committed = commit_files(table, add=write_data_files(frame(spark, range(1)), table))
    code, _, err = cdp(capsys, "tables", "rollback", "acme.customers", "12345", *zone_args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "acme.customers has no snapshot 12345; 'cdp tables history acme.customers' lists its snapshots" in err
    assert load_table(zone.open(), "acme", "customers").current_snapshot().snapshot_id == committed.snapshot_id


def test_a_rollback_racing_a_commit_is_refused_and_changes_nothing(spark, zone) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    first = commit_files(table, add=write_data_files(frame(spark, range(1)), table), raw_files=["k1"])
    commit_files(table, add=write_data_files(frame(spark, range(1, 2)), table), raw_files=["k2"])
    stale = load_table(zone.open(), "acme", "customers")
    winner = commit_files(table, add=write_data_files(frame(spark, range(2, 3)), table), raw_files=["k3"])

    with pytest.raises(CommitError, match="changed while rolling back"):
        rollback(stale, first.snapshot_id)
    assert load_table(zone.open(), "acme", "customers").current_snapshot().snapshot_id == winner.snapshot_id


# -- compact ------------------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def any_zone(request: pytest.FixtureRequest, tmp_path: Path) -> ProcessedZone:
    """A processed zone on a local folder, then on S3 (moto)."""
    warehouse = str(tmp_path / "processed") if request.param == "local" else request.getfixturevalue("s3_url")
    return ProcessedZone.resolve(warehouse, f"sqlite:///{tmp_path / 'catalog.db'}")


def test_compaction_packs_small_files_per_partition_in_one_snapshot_keeping_rows_and_processed_files(
    spark, any_zone, capsys
) -> None:
    zone = any_zone
    zone_args = ["--processed-url", zone.warehouse, "--catalog-url", zone.catalog_url]
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema, ["bucket(2, customer_id)"])
    for batch in range(4):
        rows = frame(spark, range(batch * 10, batch * 10 + 10))
        commit_files(table, add=write_data_files(rows, table), raw_files=[f"acme/stripe/k{batch}"])
    before_rows = rows_of(table)
    before_files = live_data_files(table)
    before_snapshot = table.current_snapshot().snapshot_id
    assert len(before_files) == 8  # Four commits, two buckets each.

    code, out, _ = cdp(capsys, "tables", "compact", "acme.customers", *zone_args, "--json")
    assert code == 0
    result = json.loads(out)
    assert (result["rewritten_files"], result["written_files"], result["rows"], result["partitions"]) == (8, 2, 40, 2)

    table = load_table(zone.open(), "acme", "customers")
    snapshot = table.current_snapshot()
    assert snapshot.snapshot_id == result["snapshot_id"]
    assert snapshot.parent_snapshot_id == before_snapshot  # ONE snapshot.
    after_files = live_data_files(table)
    assert len(after_files) == 2
    assert not set(after_files) & set(before_files)
    assert sorted(file.partition[0] for file in after_files.values()) == [0, 1]
    assert rows_of(table) == before_rows
    assert read_table(spark, table).count() == len(before_rows)
    assert processed_raw_files(table) == {f"acme/stripe/k{batch}" for batch in range(4)}
    assert snapshot.summary["cdp.maintenance"] == "compact"

    # Nothing left to do: no snapshot.
    code, out, _ = cdp(capsys, "tables", "compact", "acme.customers", *zone_args)
    assert code == 0
    assert "nothing to compact" in out
    assert load_table(zone.open(), "acme", "customers").current_snapshot().snapshot_id == snapshot.snapshot_id


def test_compaction_of_an_unpartitioned_table_writes_one_file(spark, zone) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    for batch in range(3):
        commit_files(table, add=write_data_files(frame(spark, range(batch * 5, batch * 5 + 5)).repartition(2), table))
    before = rows_of(table)
    result = compact(spark, table)
    assert (result.written_files, result.rows) == (1, 15)
    assert len(live_data_files(table)) == 1
    assert rows_of(table) == before


def test_compaction_racing_a_commit_is_refused_with_the_commit_error_line(spark, zone) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    for batch in range(2):
        commit_files(table, add=write_data_files(frame(spark, range(batch, batch + 1)), table))
    stale = load_table(zone.open(), "acme", "customers")
    winner = commit_files(table, add=write_data_files(frame(spark, range(9, 10)), table), raw_files=["k9"])

    with pytest.raises(CommitError, match=r"changed while compacting; run 'cdp tables compact acme.customers' again"):
        compact(spark, stale)
    current = load_table(zone.open(), "acme", "customers")
    assert current.current_snapshot().snapshot_id == winner.snapshot_id
    assert current.scan().count() == 3


def _data_file(path: str, size: int, bucket: int) -> Any:
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    found = DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=Record(bucket),
        file_size_in_bytes=size,
        record_count=1,
    )
    found.spec_id = 0
    return found


def test_compaction_packs_first_fit_by_decreasing_size_per_partition_and_leaves_big_and_lone_files() -> None:
    files = [
        _data_file("a", 100, 0),
        _data_file("b", 60, 0),
        _data_file("c", 50, 0),
        _data_file("d", 30, 0),
        _data_file("big", 128, 0),  # Not smaller than the target: never rewritten.
        _data_file("e", 10, 1),  # Alone in its partition: nothing to pack it with.
        _data_file("f", 20, 2),
        _data_file("g", 20, 2),
    ]
    groups = plan_compaction(files, target_size=128)
    # Partition 0: 100 | 60 + 50 | 30 (no room left beside 100 or 110): only 60 + 50 is a group worth writing.
    assert sorted(sorted(file.file_path for file in group) for group in groups) == [["b", "c"], ["f", "g"]]


@pytest.mark.parametrize(
    ("text", "size"),
    [("256MB", 256 * 2**20), ("128m", 128 * 2**20), ("512MiB", 512 * 2**20), ("0.25GB", 256 * 2**20)],
)
def test_the_target_file_size_reads_binary_units(text, size) -> None:
    assert parse_file_size(text) == size
    assert MIN_TARGET_FILE_SIZE <= size <= MAX_TARGET_FILE_SIZE


@pytest.mark.parametrize("text", ["64MB", "1GB", "big", "256 parsecs"])
def test_a_target_file_size_outside_128_to_512_mb_is_refused_in_one_line(text, spark, zone, zone_args, capsys) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    commit_files(table, add=write_data_files(frame(spark, range(1)), table))
    code, _, err = cdp(capsys, "tables", "compact", "acme.customers", "--target-file-size", text, *zone_args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "target_file_size" in err


# -- expire -------------------------------------------------------------------------------------------------------


def _set_mtime(path: str, when: datetime) -> None:
    os.utime(ObjectStore(path).local_path(""), (when.timestamp(), when.timestamp()))


def test_expiry_deletes_only_what_no_kept_snapshot_references_and_spares_a_running_transforms_new_file(
    spark, zone
) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    committed = [commit_files(table, add=write_data_files(frame(spark, range(3)), table), raw_files=["k0"])]
    for number in range(1, 4):  # Each commit replaces the table: the old files are referenced by old snapshots only.
        rewritten = write_data_files(frame(spark, range(3), f"v{number}"), table)
        committed.append(
            commit_files(table, add=rewritten, remove=list(live_data_files(table)), raw_files=[f"k{number}"])
        )
    snapshots = {s.snapshot_id: s for s in table.snapshots()}
    files_of = {snapshot_id: set(live_data_files(table, snapshot_id)) for snapshot_id in snapshots}
    manifest_lists = {snapshot_id: s.manifest_list for snapshot_id, s in snapshots.items()}
    current_rows = rows_of(table)

    # Eight days pass. A crashed run left a data file a month ago; a running transform wrote one just now.
    now = datetime.now(UTC) + timedelta(days=8)
    crashed = write_data_files(frame(spark, range(1)), table, run_id="crashed")
    running = write_data_files(frame(spark, range(1)), table, run_id="running")
    for path in crashed:
        _set_mtime(path, now - timedelta(days=30))
    for path in running:
        _set_mtime(path, now)

    result = expire(table, timedelta(days=7), retain_last=2, now=now)

    kept_ids = [c.snapshot_id for c in committed[2:]]
    expired_ids = [c.snapshot_id for c in committed[:2]]
    assert sorted(result.expired_snapshots) == sorted(expired_ids)
    table = load_table(zone.open(), "acme", "customers")
    assert sorted(s.snapshot_id for s in table.snapshots()) == sorted(kept_ids)

    def exists(path: str) -> bool:
        return ObjectStore(path).local_path("").exists()

    for snapshot_id in kept_ids:  # Every file a kept snapshot references is still there and readable.
        assert all(exists(path) for path in files_of[snapshot_id])
        assert exists(manifest_lists[snapshot_id])
        assert table.scan(snapshot_id=snapshot_id).count() == 3
    for snapshot_id in expired_ids:
        assert not any(exists(path) for path in files_of[snapshot_id])
        assert not exists(manifest_lists[snapshot_id])
    assert result.deleted_files >= 2 * 2  # Two expired snapshots' data files and manifest lists, at least.
    assert not any(exists(path) for path in crashed)
    assert result.deleted_orphans == len(crashed)
    assert all(exists(path) for path in running)  # The age guard: younger than the retention.
    assert rows_of(table) == current_rows
    assert processed_raw_files(table) == {"k0", "k1", "k2", "k3"}
    # The running transform can still commit its file.
    commit_files(table, add=running, raw_files=["k4"])
    assert table.scan().count() == 4


def test_expiry_keeps_the_snapshot_whose_processed_files_record_a_kept_one_inherits(spark, zone) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    recorded = commit_files(table, add=write_data_files(frame(spark, range(2)), table), raw_files=["k0", "k1"])
    # A snapshot committed by another writer carries no record: it inherits its parent's.
    table.append(table.scan().to_arrow())
    now = datetime.now(UTC) + timedelta(days=8)

    result = expire(table, timedelta(days=7), retain_last=1, now=now)

    assert result.expired_snapshots == []
    table = load_table(zone.open(), "acme", "customers")
    assert recorded.snapshot_id in {s.snapshot_id for s in table.snapshots()}
    assert processed_raw_files(table) == {"k0", "k1"}


def test_expire_on_the_command_line_keeps_recent_snapshots(spark, zone, zone_args, capsys) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    for number in range(3):
        commit_files(table, add=write_data_files(frame(spark, range(number, number + 1)), table))
    code, out, _ = cdp(capsys, "tables", "expire", "acme.customers", "--older-than", "7d", *zone_args, "--json")
    assert code == 0
    assert orjson.loads(out) == {
        "table": "acme.customers",
        "expired_snapshots": [],
        "deleted_files": 0,
        "deleted_orphans": 0,
        "kept_snapshots": 3,
    }
    code, _, err = cdp(capsys, "tables", "expire", "acme.customers", "--older-than", "soon", *zone_args)
    assert code == 1
    assert "older_than" in err


def test_an_expiry_racing_a_rollback_is_refused_and_keeps_the_table_whole(spark, zone) -> None:
    table = create_table(zone.open(), "acme", "customers", frame(spark, range(1)).schema)
    first = commit_files(table, add=write_data_files(frame(spark, range(1)), table), raw_files=["k0"])
    for number in range(1, 3):
        commit_files(
            table, add=write_data_files(frame(spark, range(number, number + 1)), table), raw_files=[f"k{number}"]
        )
    stale = load_table(zone.open(), "acme", "customers")
    rollback(table, first.snapshot_id)  # Meanwhile, an operator makes the oldest snapshot current.

    with pytest.raises(CommitError, match="changed while expiring"):
        expire(stale, timedelta(days=7), retain_last=1, now=datetime.now(UTC) + timedelta(days=8))

    current = load_table(zone.open(), "acme", "customers")
    assert current.current_snapshot().snapshot_id == first.snapshot_id
    assert len(current.snapshots()) == 3
    assert current.scan().count() == 1
