"""`cdp demo` (what `make demo` runs), end to end: three sandboxes through Meltano into the raw zone, the transforms
into the processed zone, the unified customers read back, loaded into PostgreSQL and the search emulator; then the
activation chain: a segment, a campaign to each destination's sandbox, signed feedback, campaign_metrics. Run again:
nothing new, the same counts, and nobody sent twice."""

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
# Each run: three taps through Meltano, then Spark over every transform, twice (the pipeline, then the campaign
# feedback). About 200 s on an idle two-core machine; beside the rest of `make test` a run has taken over 600 s. The
# limit only stops a hung run, with its output.
RUN_TIMEOUT = 900
UNIFIED = re.compile(r"unified customers: (\d+) profiles from (\d+) source records; (\d+) merged across providers")
SEGMENT = re.compile(r"segment demo-buyers: size (\d+), entered (\d+), left (\d+)")
# A row of the launches table: campaign, destination, members, sent, accepted, rejected.
LAUNCH = re.compile(
    r"│ (demo-buyers-\w+|high-value-thanks)\s+│ (email|facebook|google)\s+│ (\d+)\s+│ (\d+)\s+│ (\d+)\s+│ (\d+)\s+│"
)
SMTP = re.compile(r"SMTP sandbox: (\d+) messages received this run, (\d+) with a valid DKIM signature")
AUDIENCE = re.compile(r"(facebook|google) sandbox audience \d+: (\d+) members")
POSTED = re.compile(r"feedback posted: (.+), revenue ([\d.]+) USD")
METRICS = re.compile(r"demo-buyers-email metrics, all variants: (.+)")
SUPPRESSIONS = re.compile(r"suppressions: (\d+) \(email")


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
def test_demo_runs_the_whole_chain_and_reruns_with_the_same_counts_sending_nobody_twice(tmp_path: Path) -> None:
    postgres_data = tmp_path / "data" / "postgres"
    try:
        _run_the_demo_twice(tmp_path)
    finally:
        # The demo leaves its embedded PostgreSQL running for the user (`cdp db stop` stops it); the test must not.
        embedded_postgres.stop(postgres_data)
    assert embedded_postgres.url(postgres_data) is None


def _run_the_demo_twice(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "meltano.yml", tmp_path / "meltano.yml")
    for folder in ("segments", "campaigns", "contents"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
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
    metrics = _assert_the_first_activation(first.stdout)

    second = _run_demo(command, tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    relanded = {stream: count - landed[stream] for stream, count in _person_records(raw).items()}
    # The bookmarks hold: at most the record at a bookmark's boundary comes again (at least once, docs/taps.md).
    assert all(count <= 1 for count in relanded.values()), relanded
    again = UNIFIED.search(second.stdout)
    assert again, second.stdout[-3000:]
    assert again.groups() == found.groups()
    assert "PostgreSQL demo.customers joined to customer_metrics" in second.stdout
    _assert_the_second_activation_sends_nobody(second.stdout, metrics)


def _counts(text: str) -> dict[str, str]:
    """``"sent 16, delivered 4"`` as ``{"sent": "16", "delivered": "4"}``."""
    return dict(part.split(" ", 1) for part in text.split(", "))


def _launches(stdout: str) -> dict[str, tuple[str, int, int, int, int]]:
    """campaign -> (destination, members, sent, accepted, rejected), from the launches table."""
    return {
        found[0]: (found[1], int(found[2]), int(found[3]), int(found[4]), int(found[5]))
        for found in LAUNCH.findall(stdout)
    }


def _assert_the_first_activation(stdout: str) -> dict[str, str]:
    """The segment, a launch per destination, DKIM-valid mail, audience sizes, and metrics equal to the feedback."""
    segment = SEGMENT.search(stdout)
    assert segment, stdout[-3000:]
    size, entered, left = map(int, segment.groups())
    assert size > 0
    assert entered == size
    assert left == 0
    launches = _launches(stdout)
    assert {"demo-buyers-email", "demo-buyers-facebook", "demo-buyers-google"} <= set(launches), stdout[-3000:]
    for destination, members, sent, accepted, rejected in launches.values():
        assert 0 < sent == accepted, (destination, members, sent)
        assert rejected == 0, (destination, members, rejected)
    emailed = sum(sent for destination, _, sent, _, _ in launches.values() if destination == "email")
    smtp = SMTP.search(stdout)
    assert smtp, stdout[-3000:]
    assert int(smtp.group(1)) == int(smtp.group(2)) == emailed  # every message the relay got was validly signed
    audiences = {name: int(count) for name, count in AUDIENCE.findall(stdout)}
    assert audiences == {"facebook": launches["demo-buyers-facebook"][3], "google": launches["demo-buyers-google"][3]}
    posted = POSTED.search(stdout)
    assert posted, stdout[-3000:]
    events = _counts(posted.group(1))
    assert int(events["bounced"]) == int(events["unsubscribed"]) == int(events["converted"]) == 1
    metrics_line = METRICS.search(stdout)
    assert metrics_line, stdout[-3000:]
    metrics = _counts(metrics_line.group(1))
    assert int(metrics["sent"]) == launches["demo-buyers-email"][3]
    assert {kind: metrics[kind] for kind in events} == events  # one person per event type and member
    assert metrics["revenue"] == posted.group(2)
    suppressions = SUPPRESSIONS.search(stdout)
    assert suppressions, stdout[-3000:]
    assert int(suppressions.group(1)) >= 2  # the hard bounce and the unsubscribe
    return metrics


def _assert_the_second_activation_sends_nobody(stdout: str, metrics: dict[str, str]) -> None:
    launches = _launches(stdout)
    assert launches, stdout[-3000:]
    assert all(sent == 0 for _, _, sent, _, _ in launches.values()), launches
    smtp = SMTP.search(stdout)
    assert smtp, stdout[-3000:]
    assert int(smtp.group(1)) == 0
    assert "feedback posted: none" in stdout
    again = METRICS.search(stdout)
    assert again, stdout[-3000:]
    assert _counts(again.group(1)) == metrics
