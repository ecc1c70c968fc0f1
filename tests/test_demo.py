"""`cdp demo` (what `make demo` runs), end to end: three sandboxes through Meltano into the raw zone, the transforms
into the processed zone, the unified customers read back, loaded into PostgreSQL and the search emulator; run again,
nothing new and the same counts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loaders.postgres import embedded as embedded_postgres
from plugins.core.layout import parse_batch_key
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from tests.conftest import REPO_ROOT

# The one heavy test of the demo: real Meltano and real Spark (the readers are tested on their own in
# tests/test_demo_summary.py).
pytestmark = pytest.mark.meltano

RECORDS = 20
# Each run: three taps through Meltano, then Spark over every transform; the limit leaves room for a loaded machine.
RUN_TIMEOUT = 600
UNIFIED = re.compile(r"unified customers: (\d+) profiles from (\d+) source records; (\d+) merged across providers")


def _person_records(raw: ObjectStore) -> dict[str, int]:
    """Records per person stream landed so far: Stripe and Shopify customers, Salesforce Contacts and Leads."""
    counts: dict[str, int] = {}
    for info in raw.list("demo"):
        key = parse_batch_key(info.key)
        if key.stream in ("customers", "contact", "lead"):
            name = f"{key.provider}/{key.stream}"
            counts[name] = counts.get(name, 0) + len(read_batch(raw, info.key))
    return counts


def _run_demo(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``cdp demo`` in a process group of its own: on a timeout the whole group is killed (Meltano, the taps, Spark's
    JVM, the search emulator), not only ``cdp``, whose children would otherwise run on."""
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_demo_lands_three_providers_unifies_customers_and_reruns_with_the_same_counts(tmp_path: Path) -> None:
    postgres_data = tmp_path / "data" / "postgres"
    try:
        _run_the_demo_twice(tmp_path)
    finally:
        # The demo leaves its embedded PostgreSQL running for the user (`cdp db stop` stops it); the test must not.
        embedded_postgres.stop(postgres_data)
    assert embedded_postgres.url(postgres_data) is None


def _run_the_demo_twice(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "meltano.yml", tmp_path / "meltano.yml")
    command = [str(Path(sys.executable).parent / "cdp"), "demo", "--records", str(RECORDS)]
    env = {**os.environ, "COLUMNS": "200"}

    first = _run_demo(command, tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dead letter queue" in first.stdout
    raw = ObjectStore(str(tmp_path / "data" / "raw"))
    landed = _person_records(raw)
    assert landed["stripe/customers"] == RECORDS
    assert landed["shopify/customers"] == RECORDS
    assert landed["salesforce/contact"] + landed["salesforce/lead"] > RECORDS  # deleted rows are not extracted
    found = UNIFIED.search(first.stdout)
    assert found, first.stdout[-3000:]
    customers, records, merged = map(int, found.groups())
    assert records == sum(landed.values())  # every person-record landed is in the identity map
    # The sandboxes share people (tests/test_synthetic_population.py): fewer profiles than records, some of them
    # holding records of two or three providers.
    assert 0 < merged < customers < records
    # Served: the profile store answers the query an application would run, the search emulator a name search.
    assert "PostgreSQL demo.customers joined to customer_metrics" in first.stdout
    assert re.search(r"│ cus_[0-9a-f]{24} │", first.stdout), first.stdout[-3000:]
    searched = re.search(r"search demo_customers for '(.+?)': (\d+) customers", first.stdout)
    assert searched, first.stdout[-3000:]
    assert int(searched.group(2)) >= 1

    second = _run_demo(command, tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    relanded = {stream: count - landed[stream] for stream, count in _person_records(raw).items()}
    # The bookmarks hold: at most the record at a bookmark's boundary comes again (at least once, docs/taps.md).
    assert all(count <= 1 for count in relanded.values()), relanded
    again = UNIFIED.search(second.stdout)
    assert again, second.stdout[-3000:]
    assert again.groups() == found.groups()
    assert "PostgreSQL demo.customers joined to customer_metrics" in second.stdout
