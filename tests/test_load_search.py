"""The Elasticsearch / OpenSearch loader on two API emulators, and on a real cluster when CDP_TEST_ES_URL is set.

No real Elasticsearch or OpenSearch installs from the registries these machines reach. The Elasticsearch path runs
against ``noida-db`` (it speaks the Elasticsearch 8.15 REST API; started here, it ships no pytest fixture), the
OpenSearch path against ``osmem-server`` (an in-memory OpenSearch 3.x API; its ``osmem_clone`` fixture gives each test
a fresh cluster). Tables are Iceberg tables committed the way the transforms commit (tests/test_load_postgres.py).
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import pytest
import requests

from loaders.elasticsearch.emulator import _free_port, noida_elasticsearch
from loaders.elasticsearch.loader import SearchLoader
from plugins.cli.app import main
from plugins.connectors.testing import wait_until
from plugins.descriptors import LoadMode
from plugins.loaders.runner import load_tables, rollback
from plugins.transforms.catalog import create_table
from tests.loading_support import commit, customer, customers_schema

REAL_CLUSTER_ENV = "CDP_TEST_ES_URL"
KEYS = {"customers": ("customer_id",), "orders": ("order_id",)}


@pytest.fixture(scope="session")
def noida_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """noida-db serving only its Elasticsearch API on a free port, for the whole session."""
    with noida_elasticsearch(tmp_path_factory.mktemp("noida")) as url:
        yield url


@pytest.fixture(params=["elasticsearch", "opensearch"])
def cluster(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(flavour, url)``: noida-db for Elasticsearch, a fresh osmem-server clone for OpenSearch."""
    if request.param == "elasticsearch":
        return "elasticsearch", request.getfixturevalue("noida_url")
    return "opensearch", request.getfixturevalue("osmem_clone").url


@pytest.fixture
def dlq_dir(tmp_path: Path) -> Path:
    return tmp_path / "dlq"


@pytest.fixture
def loader(cluster: tuple[str, str], dlq_dir: Path) -> Iterator[SearchLoader]:
    flavour, url = cluster
    with SearchLoader(url, flavour=flavour, number_of_replicas=0, dlq_url=str(dlq_dir), chunk_size=64) as built:
        yield built


def load(loader: SearchLoader, catalog: Any, tenant: str, **options: Any) -> Any:
    (done,) = load_tables(catalog, {"search": loader}, KEYS, tenants=[tenant], tables=["customers"], **options)
    return done


def documents(loader: SearchLoader, index: str) -> dict[str, dict[str, Any]]:
    loader.client.indices.refresh(index=index)
    hits = loader.client.search(index=index, body={"query": {"match_all": {}}, "size": 1000})["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


def test_bulk_load_then_incremental_upserts_and_deletes_and_a_rerun_loads_nothing(
    catalog: Any, loader: SearchLoader, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    first_snapshot, first = commit(table, [customer(n) for n in range(100)])
    initial = load(loader, catalog, tenant)
    alias = f"{tenant}_customers"
    assert (initial.mode, initial.result.inserted) == (LoadMode.FULL_REFRESH, 100)
    assert loader.live_index(tenant, "customers") == f"{alias}_v{first_snapshot}"
    assert loader.loaded_snapshot(tenant, "customers") == first_snapshot

    mapping = loader.client.indices.get_mapping(index=alias)[f"{alias}_v{first_snapshot}"]["mappings"]
    fields = mapping["properties"]
    assert fields["customer_id"]["type"] == fields["email"]["type"] == fields["phone"]["type"] == "keyword"
    assert fields["first_name"]["type"] == "text"
    assert fields["first_name"]["fields"]["keyword"]["type"] == "keyword"
    assert (fields["lifetime_value"]["type"], float(fields["lifetime_value"]["scaling_factor"])) == (
        "scaled_float",
        1e9,
    )
    assert fields["updated_at"]["type"] == "date"
    assert fields["custom_fields"]["properties"]["seats"]["type"] == "long"  # A struct: an object of typed fields.
    assert mapping["dynamic"] == "strict"
    docs = documents(loader, alias)
    assert docs["cus_00007"]["lifetime_value"] == "1.750000000"  # Exact digits in _source.
    assert docs["cus_00007"]["custom_fields"] == {"plan": "pro", "seats": 7}
    hits = loader.client.search(index=alias, body={"query": {"match": {"first_name": "Name7"}}})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["cus_00007"]

    # A merge: the file is replaced by one where 10 rows changed and 5 are gone; 3 new customers arrive in another.
    changed = [customer(n, version=1 if n < 10 else 0) for n in range(100) if not 10 <= n < 15]
    commit(table, changed, remove=[first])
    second_snapshot, _ = commit(table, [customer(n) for n in range(100, 103)])
    incremental = load(loader, catalog, tenant)
    result = incremental.result
    assert incremental.mode is LoadMode.INCREMENTAL
    assert (result.inserted, result.updated, result.deleted) == (3, 95, 5)
    docs = documents(loader, alias)
    assert len(docs) == 98
    assert docs["cus_00003"]["first_name"] == "Name3v1"
    assert not {f"cus_{n:05d}" for n in range(10, 15)} & set(docs)
    assert loader.loaded_snapshot(tenant, "customers") == second_snapshot
    assert loader.live_index(tenant, "customers") == f"{alias}_v{first_snapshot}"  # Incremental: same index.

    rerun = load(loader, catalog, tenant)
    assert (rerun.skipped, rerun.note, rerun.result.snapshot_id) == (True, "up to date", second_snapshot)


def test_full_refresh_moves_the_alias_atomically_and_rollback_moves_it_back(
    catalog: Any, loader: SearchLoader, tenant: str
) -> None:
    table = create_table(catalog, tenant, "customers", customers_schema())
    first_snapshot, first = commit(table, [customer(n) for n in range(50)])
    load(loader, catalog, tenant)
    second_snapshot, _ = commit(table, [customer(n, version=2) for n in range(80)], remove=[first])
    alias = f"{tenant}_customers"

    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_in_a_loop() -> None:
        with SearchLoader(loader.url, flavour=loader.flavour) as reader:
            while not stop.is_set():
                try:
                    seen.append(int(reader.client.count(index=alias)["count"]))
                except Exception as exc:
                    errors.append(exc)
                    return

    reader = threading.Thread(target=search_in_a_loop)
    reader.start()
    try:
        wait_until(lambda: len(seen) >= 3, 30, "searches before the swap")
        refreshed = load(loader, catalog, tenant, full_refresh=True)
        before_stop = len(seen)
        wait_until(lambda: len(seen) >= before_stop + 3, 30, "searches after the swap")
    finally:
        stop.set()
        reader.join(timeout=30)
    assert errors == []
    assert set(seen) == {50, 80}  # The old index or the new one, never an empty or partial one.
    assert seen.index(80) > 0
    assert 50 not in seen[seen.index(80) :]
    assert (refreshed.mode, refreshed.result.inserted) == (LoadMode.FULL_REFRESH, 80)
    assert loader.live_index(tenant, "customers") == f"{alias}_v{second_snapshot}"
    assert loader.client.indices.exists(index=f"{alias}_v{first_snapshot}")  # Kept for rollback.

    assert rollback(loader, "search", tenant, "customers") == first_snapshot
    assert loader.live_index(tenant, "customers") == f"{alias}_v{first_snapshot}"
    assert loader.client.count(index=alias)["count"] == 50
    assert rollback(loader, "search", tenant, "customers") == second_snapshot  # A second rollback undoes the first.

    # Another table whose name extends this one's: its own template wins for its indexes, and swaps leave ours alone.
    vip = create_table(catalog, tenant, "customers_vip", customers_schema())
    commit(vip, [customer(n) for n in range(7)])
    keys = {**KEYS, "customers_vip": ("customer_id",)}
    load_tables(catalog, {"search": loader}, keys, tenants=[tenant], tables=["customers_vip"])
    vip_index = loader.live_index(tenant, "customers_vip")
    assert vip_index is not None
    assert loader.client.count(index=f"{tenant}_customers_vip")["count"] == 7

    # The next swap deletes the index before the previous one; the replaced one is kept.
    third_snapshot, _ = commit(table, [customer(n, version=3) for n in range(200, 210)])
    load(loader, catalog, tenant, full_refresh=True)
    assert loader.live_index(tenant, "customers") == f"{alias}_v{third_snapshot}"
    assert loader.client.indices.exists(index=f"{alias}_v{second_snapshot}")
    assert not loader.client.indices.exists(index=f"{alias}_v{first_snapshot}")
    assert loader.client.indices.exists(index=vip_index)


def test_a_rejected_document_goes_to_the_dlq_as_load_rejected_and_the_rest_loads(
    catalog: Any, cluster: tuple[str, str], dlq_dir: Path, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql.types import StringType, StructField, StructType

    flavour, url = cluster
    schema = StructType([StructField("customer_id", StringType()), StructField("birthday", StringType())])
    table = create_table(catalog, tenant, "customers", schema)
    rows = [{"customer_id": f"cus_{n}", "birthday": f"1990-01-{n + 1:02d}"} for n in range(5)]
    rows.append({"customer_id": "cus_bad", "birthday": "31/02/1990"})  # Not a date: the override maps it as one.
    snapshot, _ = commit(table, rows)
    overrides = {"customers": {"birthday": {"type": "date", "format": "strict_date"}}}
    with SearchLoader(url, flavour=flavour, dlq_url=str(dlq_dir), field_mappings=overrides) as loader:
        done = load(loader, catalog, tenant)
        assert done.result.inserted == 5
        assert loader.loaded_snapshot(tenant, "customers") == snapshot  # Verified: 6 rows less 1 rejected.
        assert "cus_bad" not in documents(loader, f"{tenant}_customers")

    common = ["--dlq-url", str(dlq_dir), "--tenant", tenant]
    capsys.readouterr()
    assert main(["dlq", "list", *common, "--error-type", "load_rejected", "--json"]) == 0
    (batch,) = orjson.loads(capsys.readouterr().out)["batches"]
    assert (batch["provider"], batch["error_type"], batch["stream"], batch["records"]) == (
        flavour,
        "load_rejected",
        "customers",
        1,
    )
    assert main(["dlq", "show", batch["key"], "--dlq-url", str(dlq_dir), "--json"]) == 0
    shown = capsys.readouterr().out
    assert "cus_bad" in shown
    assert "birthday" in shown
    assert main(["dlq", "stats", *common, "--since", "1d", "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    (row,) = stats["by_stream"]
    assert (row["error_type"], row["records"]) == ("load_rejected", 1)
    # A store's rejection is not a validation failure of a source: no provider's success rate counts it.
    assert all(provider["dlq_records"] == 0 for provider in stats["providers"])
    # Not a raw record: reprocessing into the raw zone is refused, saying what to do instead.
    zones = ["--raw-url", str(dlq_dir.parent / "raw"), "--registry-url", str(dlq_dir.parent / "registry")]
    assert main(["dlq", "reprocess", batch["key"], "--dlq-url", str(dlq_dir), *zones, "--json"]) == 1
    assert "cdp load run --full-refresh" in capsys.readouterr().out


def test_cli_loads_into_the_search_cluster_by_es_url(
    catalog: Any, noida_url: str, tenant: str, dlq_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql.types import StringType, StructField, StructType

    table = create_table(catalog, tenant, "orders", StructType([StructField("order_id", StringType())]))
    commit(table, [{"order_id": f"o{n}"} for n in range(3)])
    warehouse = urlparse(catalog.properties["warehouse"]).path
    os.environ["CDP_CATALOG_URL"] = catalog.properties["uri"]
    try:
        common = ["--processed-url", warehouse, "--tenant", tenant, "--destination", "elasticsearch"]
        assert main(["load", "run", *common, "--es-url", noida_url, "--json"]) == 0
        summary = orjson.loads(capsys.readouterr().out)
        assert (summary["inserted"], summary["tables"][0]["destination"]) == (3, "elasticsearch")
        assert main(["load", "status", *common, "--es-url", noida_url, "--json"]) == 0
        (status,) = orjson.loads(capsys.readouterr().out)
        assert status["up_to_date"] is True
        # A full refresh of the snapshot already live builds beside it; rollback moves the alias back.
        assert main(["load", "run", *common, "--es-url", noida_url, "--full-refresh"]) == 0
        assert "orders -> elasticsearch: full-refresh" in capsys.readouterr().err
        rolled = ["load", "rollback", "orders", "--tenant", tenant, "--destination", "elasticsearch"]
        assert main([*rolled, "--es-url", noida_url]) == 0
        assert " ".join(capsys.readouterr().out.split()).endswith(f"holds snapshot {status['latest_snapshot_id']}")
        with SearchLoader(noida_url) as loader:
            assert loader.live_index(tenant, "orders") == f"{tenant}_orders_v{status['latest_snapshot_id']}"
    finally:
        del os.environ["CDP_CATALOG_URL"]


def test_an_unreachable_cluster_fails_in_one_line_without_credentials() -> None:
    from loaders.elasticsearch.loader import SearchLoadError

    url = f"http://user:s3cret@127.0.0.1:{_free_port()}"
    with SearchLoader(url, request_timeout=2) as loader, pytest.raises(SearchLoadError) as raised:
        loader.loaded_snapshot("acme", "customers")
    message = str(raised.value)
    assert "cannot reach elasticsearch at http://127.0.0.1:" in message
    assert "s3cret" not in message
    assert "user" not in message


@pytest.mark.skipif(
    not os.environ.get(REAL_CLUSTER_ENV),
    reason=f"no real cluster: set {REAL_CLUSTER_ENV} (and CDP_TEST_ES_FLAVOUR=opensearch for OpenSearch) to run it",
)
def test_on_a_real_cluster(catalog: Any, tenant: str, dlq_dir: Path) -> None:
    url = os.environ[REAL_CLUSTER_ENV]
    flavour = os.environ.get("CDP_TEST_ES_FLAVOUR", "elasticsearch")
    table = create_table(catalog, tenant, "customers", customers_schema())
    _, first = commit(table, [customer(n) for n in range(100)])
    with SearchLoader(url, flavour=flavour, dlq_url=str(dlq_dir)) as loader:
        assert load(loader, catalog, tenant).result.inserted == 100
        commit(table, [customer(n, version=1) for n in range(90)], remove=[first])
        result = load(loader, catalog, tenant).result
        assert (result.updated, result.deleted) == (90, 10)
        second = load(loader, catalog, tenant, full_refresh=True)
        assert second.result.inserted == 90
        assert loader.client.count(index=f"{tenant}_customers")["count"] == 90
        alias = f"{tenant}_customers"
        for index in loader.client.indices.get(index=f"{alias}_v*"):
            loader.client.indices.delete(index=index)
        loader.client.indices.delete_index_template(name=f"cdp_{alias}")


class _Throttling(http.server.BaseHTTPRequestHandler):
    """A real HTTP hop in front of the emulator that answers ``_bulk`` with 429 while ``server.throttle`` > 0."""

    server: _ThrottlingServer

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].endswith("/_bulk"):
            self.server.bulk_requests += 1
            if self.server.throttle > 0:
                self.server.throttle -= 1
                payload = orjson.dumps({"error": {"type": "es_rejected_execution_exception"}, "status": 429})
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
        skip = {"host", "content-length", "connection"}
        headers = {name: value for name, value in self.headers.items() if name.lower() not in skip}
        answer = requests.request(
            self.command, self.server.upstream + self.path, data=body, headers=headers, timeout=30
        )
        self.send_response(answer.status_code)
        for name in ("Content-Type", "X-Elastic-Product"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on counts, not on the access log."""


class _ThrottlingServer(http.server.ThreadingHTTPServer):
    def __init__(self, upstream: str, throttle: int) -> None:
        super().__init__(("127.0.0.1", 0), _Throttling)
        self.upstream, self.throttle, self.bulk_requests = upstream, throttle, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def throttling(upstream: str, throttle: int) -> Iterator[_ThrottlingServer]:
    server = _ThrottlingServer(upstream, throttle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_bulk_backs_off_and_retries_on_429_and_fails_the_load_when_it_persists(
    catalog: Any, noida_url: str, tenant: str, dlq_dir: Path
) -> None:
    from loaders.elasticsearch.loader import SearchLoadError

    table = create_table(catalog, tenant, "customers", customers_schema())
    snapshot, _ = commit(table, [customer(n) for n in range(30)])
    with throttling(noida_url, throttle=2) as proxy:
        with SearchLoader(proxy.url, initial_backoff=0.01, max_retries=3, dlq_url=str(dlq_dir)) as loader:
            assert load(loader, catalog, tenant).result.inserted == 30
            assert loader.loaded_snapshot(tenant, "customers") == snapshot
        assert (proxy.throttle, proxy.bulk_requests) == (0, 3)  # Two refused, the third went through.
        assert not dlq_dir.exists()  # A throttled document is retried, never dead-lettered.

    other = f"{tenant}x"
    table = create_table(catalog, other, "customers", customers_schema())
    commit(table, [customer(n) for n in range(30)])
    with (
        throttling(noida_url, throttle=100) as proxy,
        SearchLoader(proxy.url, initial_backoff=0.01, max_retries=2) as loader,
    ):
        with pytest.raises(SearchLoadError, match="429"):
            load(loader, catalog, other)
        assert proxy.bulk_requests == 3  # The first try and two retries.
        assert loader.live_index(other, "customers") is None  # Nothing swapped in, nothing recorded.


def test_a_full_refresh_that_fails_verification_leaves_the_alias_where_it_was(
    catalog: Any, noida_url: str, tenant: str, dlq_dir: Path
) -> None:
    from loaders.elasticsearch.loader import SearchLoadError

    table = create_table(catalog, tenant, "customers", customers_schema())
    first_snapshot, _ = commit(table, [customer(n) for n in range(5)])
    with SearchLoader(noida_url, dlq_url=str(dlq_dir)) as loader:
        load(loader, catalog, tenant)
        commit(table, [customer(1, version=1)])  # The key cus_00001 twice in one snapshot: 6 rows, 5 documents.
        with pytest.raises(SearchLoadError, match="5 documents but 6 expected"):
            load(loader, catalog, tenant, full_refresh=True)
        assert loader.live_index(tenant, "customers") == f"{tenant}_customers_v{first_snapshot}"
        assert loader.loaded_snapshot(tenant, "customers") == first_snapshot


def test_the_emulator_stops_with_its_block(tmp_path: Path) -> None:
    with noida_elasticsearch(tmp_path / "noida") as url:
        assert requests.get(url, timeout=5).json()["version"]["number"].startswith("8.")
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)  # The server process itself ended, not only a wrapper around it.
