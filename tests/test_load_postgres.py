"""The PostgreSQL loader against the embedded PostgreSQL, on Iceberg tables committed the way the transforms commit
(tests/loading_support.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest

from loaders.postgres.loader import PostgresLoader
from loaders.postgres.schema import SchemaChangeError
from plugins.cli.app import main
from plugins.descriptors import LoadMode
from plugins.loaders.runner import load_one, load_status, load_tables, rollback
from plugins.transforms.catalog import create_table
from tests.loading_support import START, commit, customer, customers_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
KEYS = {"customers": ("customer_id",), "orders": ("order_id",), "events": ("event_id",)}


@pytest.fixture
def loader(postgres_url: str) -> Any:
    with PostgresLoader(postgres_url) as built:
        yield built


def rows_in(url: str, tenant: str, table: str, order: str = "customer_id") -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(f'SELECT * FROM "{tenant}"."{table}" ORDER BY {order}').fetchall()


def xmins(url: str, tenant: str, table: str) -> dict[str, str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(f'SELECT customer_id, xmin::text FROM "{tenant}"."{table}"').fetchall()
    return dict(rows)


def load(loader: PostgresLoader, catalog: Any, tenant: str, **options: Any) -> Any:
    (done,) = load_tables(catalog, {"postgres": loader}, KEYS, tenants=[tenant], tables=["customers"], **options)
    return done


def test_incremental_loads_equal_a_full_refresh_of_the_same_snapshots(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    _, first = commit(table, [customer(n) for n in range(100)])
    incremental = [load(loader, catalog, tenant)]
    # A merge: the file is replaced by one where 10 rows changed, 5 are gone (merged away) and 85 are as before.
    changed = [customer(n, version=1 if n < 10 else 0) for n in range(100) if not 10 <= n < 15]
    commit(table, changed, remove=[first])
    incremental.append(load(loader, catalog, tenant))
    commit(table, [customer(n) for n in range(100, 120)])
    incremental.append(load(loader, catalog, tenant))

    assert [item.mode for item in incremental] == [LoadMode.FULL_REFRESH, LoadMode.INCREMENTAL, LoadMode.INCREMENTAL]
    second = incremental[1].result
    assert (second.inserted, second.updated, second.unchanged, second.deleted) == (0, 10, 85, 5)
    assert incremental[2].result.inserted == 20

    other = f"{tenant}x"
    catalog.create_namespace(other)
    copy = catalog.register_table((other, "customers"), table.metadata_location)
    full = load_one(loader, "postgres", copy, other, KEYS["customers"], full_refresh=True)
    assert full.mode is LoadMode.FULL_REFRESH
    assert full.result.inserted == 115
    loaded = rows_in(postgres_url, tenant, "customers")
    assert loaded == rows_in(postgres_url, other, "customers")
    expected = sorted(table.scan().to_arrow().to_pylist(), key=lambda row: row["customer_id"])
    assert [row[0] for row in loaded] == [row["customer_id"] for row in expected]
    assert loaded[3][:8] == (
        "cus_00003",
        "person3@example.org",
        "+15550000003",
        "Name3v1",
        Decimal("0.750000000"),
        ["vip", "t0"],
        {"plan": "pro", "seats": 3},
        START + timedelta(hours=4),
    )


def test_a_rerun_loads_nothing(catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    snapshot, _ = commit(table, [customer(n) for n in range(20)])
    load(loader, catalog, tenant)
    before = xmins(postgres_url, tenant, "customers")

    again = load(loader, catalog, tenant)

    assert again.skipped
    assert again.note == "up to date"
    assert again.result.snapshot_id == snapshot
    assert (again.result.inserted, again.result.updated, again.result.deleted) == (0, 0, 0)
    assert xmins(postgres_url, tenant, "customers") == before
    commit(table, [customer(99)])
    (status,) = load_status(catalog, {"postgres": loader}, KEYS, tenants=[tenant])
    assert (status.loaded_snapshot_id, status.snapshots_behind, status.up_to_date) == (snapshot, 1, False)


def test_unchanged_rows_cost_no_write(catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    _, first = commit(table, [customer(n) for n in range(50)])
    load(loader, catalog, tenant)
    before = xmins(postgres_url, tenant, "customers")

    # The merge rewrote the whole file; only one row's content differs.
    commit(table, [customer(n, version=1 if n == 7 else 0) for n in range(50)], remove=[first])
    done = load(loader, catalog, tenant)

    assert (done.result.updated, done.result.unchanged, done.result.inserted) == (1, 49, 0)
    after = xmins(postgres_url, tenant, "customers")
    assert {key for key in before if after[key] != before[key]} == {"cus_00007"}


def test_keys_removed_by_a_file_level_replace_are_deleted(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    _, first = commit(table, [customer(n) for n in range(10)])
    commit(table, [customer(n) for n in range(10, 20)])
    load(loader, catalog, tenant)

    # cus_00003 was merged into cus_00004: its file is replaced by one without it.
    commit(table, [customer(n) for n in range(10) if n != 3], remove=[first])
    done = load(loader, catalog, tenant)

    assert done.result.deleted == 1
    keys = [row[0] for row in rows_in(postgres_url, tenant, "customers")]
    assert "cus_00003" not in keys
    assert len(keys) == 19


def test_a_new_column_is_added_to_the_loaded_table(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    from pyiceberg.types import StringType

    table = create_table(catalog, tenant, "customers", customers_schema())
    commit(table, [customer(n) for n in range(5)])
    load(loader, catalog, tenant)

    with table.update_schema() as update:
        update.add_column("segment", StringType())
    table.refresh()
    commit(table, [{**customer(n), "segment": "gold"} for n in range(5, 8)])
    done = load(loader, catalog, tenant)

    assert done.mode is LoadMode.INCREMENTAL
    with psycopg.connect(postgres_url) as connection:
        segments = connection.execute(
            f'SELECT customer_id, segment FROM "{tenant}".customers ORDER BY customer_id'
        ).fetchall()
    assert segments == [(f"cus_{n:05d}", None if n < 5 else "gold") for n in range(8)]


def test_an_incompatible_change_is_refused_until_a_full_refresh(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    commit(table, [customer(n) for n in range(5)])
    load(loader, catalog, tenant)
    with table.update_schema() as update:
        update.rename_column("phone", "phone_e164")
    table.refresh()
    commit(table, [{**customer(9), "phone_e164": "+15550000009"}])

    with pytest.raises(SchemaChangeError, match=r"column 'phone' .*--full-refresh"):
        load(loader, catalog, tenant)
    assert len(rows_in(postgres_url, tenant, "customers")) == 5  # Nothing changed.

    done = load(loader, catalog, tenant, full_refresh=True)
    assert done.result.inserted == 6
    with psycopg.connect(postgres_url) as connection:
        phones = connection.execute(
            f'SELECT phone_e164 FROM "{tenant}".customers WHERE customer_id = %s', ("cus_00009",)
        )
        assert phones.fetchone() == ("+15550000009",)


KILL_SCRIPT = """
import os, signal, sys
from plugins.loaders import changes
from plugins.loaders.runner import load_tables
from plugins.transforms.catalog import ProcessedZone
from loaders.postgres.loader import PostgresLoader

warehouse, catalog_url, postgres_url, tenant, mode = sys.argv[1:]
point = "deleted_keys" if mode == "incremental" else "row_count"
original = getattr(changes.SnapshotChanges, point)

def killed(self):
    os.kill(os.getpid(), signal.SIGKILL)  # A crash: no cleanup, no rollback from the client.

setattr(changes.SnapshotChanges, point, property(killed) if point == "row_count" else killed)
catalog = ProcessedZone(warehouse, catalog_url).open()
load_tables(catalog, {"postgres": PostgresLoader(postgres_url)}, {"customers": ("customer_id",)}, tenants=[tenant],
            full_refresh=mode == "full")
"""


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_a_killed_load_changes_nothing_and_the_next_run_completes(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str, tmp_path: Path, mode: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    _, first = commit(table, [customer(n) for n in range(30)])
    loaded = load(loader, catalog, tenant).result.snapshot_id
    before = rows_in(postgres_url, tenant, "customers")
    latest, _ = commit(table, [customer(n, version=2) for n in range(25)], remove=[first])

    warehouse, catalog_url = catalog.properties["warehouse"], catalog.properties["uri"]
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), warehouse, catalog_url, postgres_url, tenant, mode],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )

    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert rows_in(postgres_url, tenant, "customers") == before
    assert loader.loaded_snapshot(tenant, "customers") == loaded
    done = load(loader, catalog, tenant, full_refresh=mode == "full")
    assert done.result.snapshot_id == latest
    assert len(rows_in(postgres_url, tenant, "customers")) == 25


def test_readers_see_the_old_or_the_new_table_during_swaps(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    commit(table, [customer(n) for n in range(200)])
    load(loader, catalog, tenant)
    errors: list[str] = []
    counts: set[int] = set()
    reading = threading.Event()
    stop = threading.Event()

    def read() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            while not stop.is_set():
                try:
                    row = connection.execute(f'SELECT count(*), max(first_name) FROM "{tenant}".customers').fetchone()
                    counts.add(row[0] if row else -1)
                except psycopg.Error as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                reading.set()

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        assert reading.wait(30)
        for new_rows in (range(200, 250), range(250, 300), [999]):
            commit(table, [customer(n) for n in new_rows])
            load(loader, catalog, tenant, full_refresh=True)
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)

    assert errors == []
    assert 0 not in counts
    assert counts <= {200, 250, 300, 301}


def test_rollback_puts_the_previous_table_back(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    first_snapshot, _ = commit(table, [customer(n) for n in range(10)])
    load(loader, catalog, tenant)
    before = rows_in(postgres_url, tenant, "customers")
    commit(table, [customer(n) for n in range(10, 15)])
    load(loader, catalog, tenant, full_refresh=True)

    assert rollback(loader, "postgres", tenant, "customers") == first_snapshot

    assert rows_in(postgres_url, tenant, "customers") == before
    assert loader.loaded_snapshot(tenant, "customers") == first_snapshot
    done = load(loader, catalog, tenant)  # Incremental again from the rolled-back snapshot.
    assert (done.mode, done.result.inserted) == (LoadMode.INCREMENTAL, 5)


def test_a_loaded_snapshot_expired_from_the_history_falls_back_to_a_full_load(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    loaded, first = commit(table, [customer(n) for n in range(10)])
    load(loader, catalog, tenant)
    commit(table, [customer(n) for n in range(4)], remove=[first])
    table.maintenance.expire_snapshots().by_id(loaded).commit()
    table.refresh()

    done = load(loader, catalog, tenant)

    assert done.mode is LoadMode.FULL_REFRESH
    assert (
        done.note
        == f"{tenant}.customers: loaded snapshot {loaded} was expired from the table's history; loading everything"
    )
    assert [row[0] for row in rows_in(postgres_url, tenant, "customers")] == [f"cus_{n:05d}" for n in range(4)]


def test_customers_get_their_workload_indexes(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    commit(table, [customer(n) for n in range(5)])
    load(loader, catalog, tenant)

    with psycopg.connect(postgres_url) as connection:
        definitions = [
            row[0]
            for row in connection.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'customers'", (tenant,)
            )
        ]
    text = "\n".join(definitions)
    assert "UNIQUE INDEX" in text
    assert "(customer_id)" in text
    assert "btree (email)" in text
    assert "btree (phone)" in text
    assert "gin (first_name gin_trgm_ops)" in text
    assert "gin (custom_fields)" in text
    assert len(definitions) == 5


def events_schema() -> Any:
    from pyspark.sql.types import StringType, StructField, StructType, TimestampType

    return StructType(
        [
            StructField("event_id", StringType()),
            StructField("customer_id_value", StringType()),
            StructField("type", StringType()),
            StructField("occurred_at", TimestampType()),
        ]
    )


def test_events_are_partitioned_by_month(catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str) -> None:
    table = create_table(catalog, tenant, "events", events_schema(), ["month(occurred_at)"])

    def event(n: int, month: int) -> dict[str, Any]:
        return {
            "event_id": f"evt_{n}",
            "customer_id_value": f"cus_{n % 3}",
            "type": "page",
            "occurred_at": datetime(2026, month, 2, tzinfo=UTC),
        }

    commit(table, [event(n, 1 + n % 2) for n in range(10)])
    load_tables(catalog, {"postgres": loader}, KEYS, tenants=[tenant], tables=["events"])
    commit(table, [event(n, 3) for n in range(10, 14)])
    (done,) = load_tables(catalog, {"postgres": loader}, KEYS, tenants=[tenant], tables=["events"])

    assert (done.mode, done.result.inserted) == (LoadMode.INCREMENTAL, 4)
    with psycopg.connect(postgres_url) as connection:
        partitions = connection.execute(
            "SELECT count(*), sum((SELECT count(*) FROM pg_inherits WHERE inhparent = c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'events' "
            "AND c.relkind = 'p'",
            (tenant,),
        ).fetchone()
        per_month = connection.execute(
            f'SELECT tableoid::regclass::text, count(*) FROM "{tenant}".events GROUP BY 1 ORDER BY 1'
        ).fetchall()
    assert partitions == (1, 3)
    assert sorted(count for _, count in per_month) == [4, 5, 5]


def test_cli_load_run_status_and_rollback(
    catalog: Any, postgres_url: str, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import orjson
    from pyspark.sql.types import StringType, StructField, StructType

    table = create_table(catalog, tenant, "orders", StructType([StructField("order_id", StringType())]))
    commit(table, [{"order_id": f"o{n}"} for n in range(3)])
    warehouse = urlparse(catalog.properties["warehouse"]).path
    os.environ["CDP_CATALOG_URL"] = catalog.properties["uri"]
    try:
        common = ["--processed-url", warehouse, "--postgres-url", postgres_url, "--tenant", tenant]
        assert main(["load", "run", *common, "--destination", "postgres", "--json"]) == 0
        summary = orjson.loads(capsys.readouterr().out)
        assert (summary["inserted"], summary["tables"][0]["table"]) == (3, "orders")
        assert main(["load", "run", *common, "--full-refresh"]) == 0
        assert "orders -> postgres: full-refresh" in capsys.readouterr().err
        assert main(["load", "status", *common, "--json"]) == 0
        (status,) = orjson.loads(capsys.readouterr().out)
        assert (status["snapshots_behind"], status["up_to_date"]) == (0, True)
        assert main(["load", "rollback", "orders", "--tenant", tenant, "--postgres-url", postgres_url]) == 0
        assert "rolled back" in capsys.readouterr().out
    finally:
        del os.environ["CDP_CATALOG_URL"]


def test_cdp_db_starts_reports_and_stops_the_embedded_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its own folder, like conftest's server: pytest's numbered folders are pruned by other runs, and their 0700
    # parents keep out the system user the server runs as under root.
    folder = Path(tempfile.mkdtemp(prefix="cdp-test-db-"))
    data_dir = str(folder / "pg")
    try:
        assert main(["db", "start", "--data-dir", data_dir]) == 0
        url = capsys.readouterr().out.strip()
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert main(["db", "url", "--data-dir", data_dir]) == 0
        assert capsys.readouterr().out.strip() == url
        assert main(["db", "status", "--data-dir", data_dir]) == 0
        # A folder above the data closed after the start (as a nested pytest run resets its base folder to 0700):
        # under root the server's own user must still reach the data to stop it.
        folder.chmod(0o700)
        assert main(["db", "stop", "--data-dir", data_dir]) == 0
        assert main(["db", "status", "--data-dir", data_dir]) == 1
        assert "not running" in capsys.readouterr().out
    finally:
        main(["db", "stop", "--data-dir", data_dir])
        shutil.rmtree(folder, ignore_errors=True)


def test_an_incremental_load_planned_from_another_snapshot_than_the_store_holds_is_refused(
    catalog: Any, loader: PostgresLoader, postgres_url: str, tenant: str
) -> None:
    from loaders.postgres.loader import PostgresLoadError
    from plugins.descriptors import LoadRequest
    from plugins.loaders.changes import plan_changes

    table = create_table(catalog, tenant, "customers", customers_schema())
    stale, _ = commit(table, [customer(1)])
    load(loader, catalog, tenant)
    held, _ = commit(table, [customer(2)])
    load(loader, catalog, tenant)
    latest, _ = commit(table, [customer(3)])

    # Planned from `stale` (as a second process that read the state before the first load committed would).
    request = LoadRequest(
        tenant,
        "customers",
        latest,
        stale,
        LoadMode.INCREMENTAL,
        changes=plan_changes(table, ["customer_id"], latest, stale),
    )
    with pytest.raises(PostgresLoadError, match=f"holds snapshot {held}, not {stale} as planned"):
        loader.load(request)
    assert loader.loaded_snapshot(tenant, "customers") == held
    assert len(rows_in(postgres_url, tenant, "customers")) == 2
