"""The delivery engine (plugins/activation) on real PostgreSQL against a real HTTP destination and its sandbox.

The destination is tests/plugin_examples/http_audience.py: an audience API served by SandboxServer with injected
faults; every count and wait is measured from the requests the sandbox saw, never from the client's side.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette

from plugins.activation import (
    ActivationError,
    DeliveryReport,
    DeliverySettings,
    deliver,
    ensure_schema,
    is_suppressed,
    suppress,
)
from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.connectors.testing import wait_until
from plugins.core.dead_letters import ErrorType
from plugins.core.raw_zone import read_batch
from plugins.core.storage import ObjectStore
from plugins.descriptors import ActivatorDescriptor, Delivery, RetryableSendError
from plugins.dlq.ops import DlqFilter, list_batches
from plugins.manager import activators
from tests.plugin_examples.http_audience import DEFAULT_TOKEN, HttpAudienceSender, create_sandbox
from tests.test_plugins import _manager_with

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = "spring-sale"
FAST = DeliverySettings(backoff_base_seconds=0.01, backoff_max_seconds=0.05)


@pytest.fixture
def destination() -> ActivatorDescriptor:
    from tests import plugin_examples

    return activators(_manager_with(plugin_examples))["http-audience"]


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def conn(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url) as connection:
        yield connection


def make_customers(conn: psycopg.Connection[Any], tenant: str, count: int) -> None:
    """``"tenant".customers`` as the loader writes it (the columns the engine reads), ``count`` customers."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{tenant}"')
    conn.execute(
        f'CREATE TABLE "{tenant}".customers (customer_id text PRIMARY KEY, email text, emails text[], phone text, '
        "phones text[], stripe_customer_ids text[], consent_email text, consent_sms text, consent_ads text)"
    )
    conn.execute(
        f"INSERT INTO \"{tenant}\".customers SELECT 'c' || i, 'person' || i || '@example.com', "
        "ARRAY['person' || i || '@example.com'], NULL, NULL, ARRAY['cus_' || i], 'granted', NULL, NULL "
        "FROM generate_series(1, %s) i",
        (count,),
    )
    conn.commit()
    ensure_schema(conn, tenant)


def member(i: int, variant: str = "a") -> Delivery:
    customer_id = f"c{i}"
    return Delivery(
        customer_id,
        {"customer_id": customer_id, "email": f"Person{i}@Example.com "},
        f"{CAMPAIGN}:{customer_id}:{variant}",
        variant=variant,
    )


@pytest.fixture
def served() -> Iterator[Any]:
    """Start sandboxes on demand: ``served(faults=..., retry_after_seconds=...)`` -> (server, app)."""
    servers: list[SandboxServer] = []

    def start(faults: FaultPlan | None = None, **kwargs: Any) -> tuple[SandboxServer, Starlette]:
        app = create_sandbox(SandboxOptions(faults=faults or FaultPlan()), **kwargs)
        server = SandboxServer(app)
        server.start()
        servers.append(server)
        return server, app

    yield start
    for server in servers:
        server.stop()


def sender_settings(server: SandboxServer, token: str = DEFAULT_TOKEN) -> dict[str, Any]:
    return {"url": server.url, "audience_id": "aud-1", "token": token}


def run(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    server: SandboxServer,
    deliveries: Any,
    **kwargs: Any,
) -> DeliveryReport:
    settings = sender_settings(server)
    sender = HttpAudienceSender(settings)
    try:
        options: dict[str, Any] = {"settings": FAST, "sender_settings": settings, "refresh_id": 1, "action": "add"}
        options.update(kwargs)
        return deliver(
            conn, tenant, campaign=CAMPAIGN, destination=destination, sender=sender, deliveries=deliveries, **options
        )
    finally:
        sender.close()


def received(*apps: Starlette) -> list[str]:
    """Every member id the sandboxes took (answered 200), in order, repeats kept."""
    return [i for app in apps for request in app.state.requests if request["status"] == 200 for i in request["ids"]]


def named_session(postgres_url: str, name: str) -> str:
    """``postgres_url`` for a run about to be killed, its session named ``name`` for :func:`wait_for_session_end`."""
    return f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={name}"


def wait_for_session_end(conn: psycopg.Connection[Any], name: str) -> None:
    """Until PostgreSQL has ended the killed client's session ``name``, and so released its advisory lock: it does when
    it notices the closed socket, soon after the kill but not at once (a run started before is refused as busy)."""

    def ended() -> bool:
        (gone,) = conn.execute(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
        conn.commit()  # pg_stat_activity is read once per transaction.
        return bool(gone)

    wait_until(lambda: ended() or None, 30, f"PostgreSQL to end the killed session {name}")


def send_log(conn: psycopg.Connection[Any], tenant: str) -> dict[str, int]:
    rows = conn.execute(f'SELECT status, count(*) FROM "{tenant}".send_log GROUP BY status').fetchall()
    return {str(status): int(count) for status, count in rows}


def test_a_25k_audience_goes_in_requests_at_the_batch_limit_each_member_once(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 25_000)
    server, app = served()
    report = run(conn, tenant, destination, server, (member(i) for i in range(1, 25_001)))

    sizes = [len(request["ids"]) for request in app.state.requests]
    assert sizes == [1000] * 25  # destination.limits.max_batch_size
    assert sorted(received(app)) == sorted(f"c{i}" for i in range(1, 25_001))
    assert (report.sent, report.accepted, report.requests, report.failed) == (25_000, 25_000, 25, 0)
    assert send_log(conn, tenant) == {"accepted": 25_000}
    run_row = conn.execute(f'SELECT status, counts FROM "{tenant}".activation_runs').fetchone()
    assert run_row is not None
    assert run_row[0] == "completed"
    assert run_row[1]["accepted"] == 25_000


def test_a_smaller_batch_setting_wins_and_a_rerun_sends_nobody_again(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 50)
    server, app = served()
    small = DeliverySettings(max_batch_size=20, backoff_base_seconds=0.01)
    first = run(conn, tenant, destination, server, [member(i) for i in range(1, 51)], settings=small)
    again = run(conn, tenant, destination, server, [member(i) for i in range(1, 51)], settings=small)

    assert [len(r["ids"]) for r in app.state.requests] == [20, 20, 10]
    assert (first.accepted, again.accepted, again.skipped_already_sent, again.requests) == (50, 0, 50, 0)


def test_requests_are_paced_by_the_rate_limit_measured_at_the_sandbox(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 25)
    server, app = served()
    paced = DeliverySettings(max_batch_size=1, requests_per_second=5)  # a bucket of 5, refilled at 5/s
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 26)], settings=paced)

    times = [request["at"] for request in app.state.requests]
    assert len(times) == report.requests == 25
    # 5 at once from the full bucket, then one per 0.2s: the 25th no sooner than 4s after the first.
    assert times[-1] - times[0] >= 4 - 0.02
    # The bucket's promise for every window: at most 5 + 5/s x its length requests.
    for start, first in enumerate(times):
        for count, last in enumerate(times[start:], start=1):
            assert count <= 5 + 5 * (last - first) + 0.1, (start, count, last - first)


def test_an_unknown_delivery_setting_is_named_in_one_line() -> None:
    with pytest.raises(ActivationError, match=r"unknown delivery setting 'max_retries'; settings: .*max_attempts"):
        DeliverySettings.from_mapping({"max_retries": 3})


def test_retries_wait_at_least_what_retry_after_asks_measured_at_the_sandbox(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 3000)
    # Every second request is throttled with Retry-After: 1; the engine's own backoff is 0.01s, so only the header
    # can explain a wait of a second.
    server, app = served(FaultPlan(rate_limit_every=2), retry_after_seconds=1)
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 3001)])

    requests = app.state.requests
    assert [r["status"] for r in requests] == [200, 429, 200, 429, 200]
    waits = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(requests) if earlier["status"] == 429]
    assert len(waits) == 2
    assert all(wait >= 1.0 for wait in waits), waits
    assert (report.accepted, report.retries, report.failed) == (3000, 2, 0)
    assert sorted(received(app)) == sorted(f"c{i}" for i in range(1, 3001))


def test_server_errors_are_retried_with_backoff(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 2000)
    server, app = served(FaultPlan(server_error_every=3, server_error_burst=2))  # requests 2, 3, 5, 6... fail
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 2001)])

    assert [r["status"] for r in app.state.requests] == [200, 500, 500, 200]
    assert (report.accepted, report.retries, report.failed) == (2000, 2, 0)


def test_a_429_storm_fails_the_batch_after_its_attempts_and_dead_letters_it(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    served: Any,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    make_customers(conn, tenant, 1500)
    server, app = served(FaultPlan(rate_limit_every=1), retry_after_seconds=0)
    dlq = ObjectStore(str(tmp_path / "dlq"))
    settings = DeliverySettings(max_attempts=3, backoff_base_seconds=0.01)
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 1501)], settings=settings, dlq=dlq)

    assert len(app.state.requests) == 6
    assert received(app) == []
    assert (report.failed, report.accepted, report.sent) == (1500, 0, 0)
    assert send_log(conn, tenant) == {"failed": 1500}
    batches = list_batches(dlq, DlqFilter(tenant=tenant, error_type=ErrorType.ACTIVATION_FAILED))
    assert sum(b.record_count or 0 for b in batches) == 1500
    entry = read_batch(dlq, batches[0].key)[0]
    assert entry["error_type"] == "activation_failed"
    assert entry["provider"] == "http-audience"
    assert entry["context"]["campaign"] == CAMPAIGN
    assert entry["context"]["status"] == "failed"
    assert entry["context"]["settings"] == {"url": server.url, "audience_id": "aud-1"}  # no token
    assert "gave up after 3 attempts" in entry["error_message"]
    assert entry["retry_count"] == 0

    # Support reprocesses while the storm goes on: the members fail again, back in the DLQ one retry further on.
    from plugins.activation.resend import ActivationResender
    from plugins.dlq.reprocess import Reprocessor
    from schema_registry import SchemaRegistry

    resender = ActivationResender(
        lambda: psycopg.connect(postgres_url),
        dlq,
        {"http-audience": destination},
        settings=settings,
        environ={"CDP_HTTP_AUDIENCE_TOKEN": DEFAULT_TOKEN},
    )
    reprocessor = Reprocessor(
        dlq,
        ObjectStore(str(tmp_path / "raw")),
        SchemaRegistry(ObjectStore(str(tmp_path / "registry"))),
        actor="support",
        handlers={"activation_failed": resender},
    )
    outcome = reprocessor.run([b.key for b in batches])
    assert outcome.totals() == {"batches": 2, "records": 1500, "passed": 0, "failed": 1500}
    again = [e for b in list_batches(dlq) for e in read_batch(dlq, b.key)]
    assert len(again) == 1500
    assert {e["retry_count"] for e in again} == {1}
    assert {b.key for b in batches}.isdisjoint(b.key for b in list_batches(dlq))  # the sources are retired
    assert send_log(conn, tenant) == {"failed": 1500}


def test_consent_suppression_and_erasure_are_checked_again_at_send_time(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any, postgres_url: str
) -> None:
    make_customers(conn, tenant, 2000)
    conn.execute(f"UPDATE \"{tenant}\".customers SET consent_email = 'denied' WHERE customer_id = 'c7'")
    conn.commit()
    suppress(conn, tenant, "email", " PERSON8@example.com", "hard_bounce", customer_id="c8")
    other = psycopg.connect(postgres_url)

    def exported() -> Iterator[Delivery]:
        """The export was read before anything changed; changes land while the first batch is being sent."""
        for i in range(1, 2001):
            if i == 1001:  # Batch 1 has been sent: c1500 opts out, c1600 unsubscribes, c1700's profile goes.
                other.execute(f"UPDATE \"{tenant}\".customers SET consent_email = 'denied' WHERE customer_id = 'c1500'")
                other.execute(f"DELETE FROM \"{tenant}\".customers WHERE customer_id = 'c1700'")
                other.commit()
                suppress(other, tenant, "email", "person1600@example.com", "unsubscribe")
            yield member(i)

    server, app = served()
    tombstones = [("email", "person9@example.com"), ("stripe_customer", "cus_10")]
    try:
        report = run(conn, tenant, destination, server, exported(), tombstones=tombstones)
    finally:
        other.close()

    never = {"c7", "c8", "c9", "c10", "c1500", "c1600", "c1700"}
    assert never.isdisjoint(received(app))
    assert len(received(app)) == 2000 - len(never)
    assert (report.skipped_consent, report.skipped_suppressed, report.skipped_erased) == (2, 2, 2)
    assert report.skipped_no_profile == 1
    assert is_suppressed(conn, tenant, "email", "Person1600@Example.com")


def test_a_remove_is_not_held_back_by_consent(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 10)
    conn.execute(f"UPDATE \"{tenant}\".customers SET consent_email = 'denied'")
    conn.commit()
    server, app = served()
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 11)], action="remove")

    assert report.accepted == 10
    assert app.state.requests[0]["path"].endswith("/members/remove")


def test_a_dry_run_sends_nothing_and_logs_nothing_as_sent(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 3000)
    conn.execute(f"UPDATE \"{tenant}\".customers SET consent_email = 'denied' WHERE customer_id = 'c3'")
    conn.commit()
    server, app = served()
    report = run(conn, tenant, destination, server, [member(i) for i in range(1, 3001)], dry_run=True)

    assert app.state.requests == []
    assert send_log(conn, tenant) == {}
    assert (report.would_send, report.skipped_consent, report.sent, report.dry_run) == (2999, 1, 0, True)
    assert [d.member_id for d in report.dry_run_sample] == ["c1", "c2", *(f"c{i}" for i in range(4, 12))]
    dry = conn.execute(f'SELECT dry_run, counts FROM "{tenant}".activation_runs').fetchone()
    assert dry is not None
    assert dry[0] is True
    assert dry[1]["would_send"] == 2999


class LeakySender(HttpAudienceSender):
    """A careless sender whose error messages carry its token (as some HTTP clients' do)."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.token = str(settings["token"])

    def add(self, deliveries: Any) -> Any:
        raise RetryableSendError(f"HTTP 503 for Authorization: Token {self.token}", retry_after=0)


def test_secrets_never_reach_the_logs_or_the_dead_letters(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    served: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_customers(conn, tenant, 5)
    server, _app = served()
    settings = sender_settings(server, token="zq-very-secret-token-77")
    dlq = ObjectStore(str(tmp_path / "dlq"))
    caplog.set_level(logging.DEBUG)
    sender = LeakySender(settings)
    report = deliver(
        conn,
        tenant,
        campaign=CAMPAIGN,
        destination=destination,
        sender=sender,
        refresh_id=1,
        action="add",
        deliveries=[member(i) for i in range(1, 6)],
        settings=DeliverySettings(max_attempts=2, backoff_base_seconds=0.01),
        sender_settings=settings,
        dlq=dlq,
    )
    sender.close()

    assert report.failed == 5
    assert report.retries == 1
    assert "activation_retry" in caplog.text
    assert "activation_batch_failed" in caplog.text
    assert "zq-very-secret-token-77" not in caplog.text
    stored = b"".join(dlq.read_bytes(b.key) for b in list_batches(dlq))
    entries = [e for b in list_batches(dlq) for e in read_batch(dlq, b.key)]
    assert entries
    assert all("zq-very-secret-token-77" not in str(e) for e in entries)
    assert stored
    reason = conn.execute(f'SELECT DISTINCT reason FROM "{tenant}".send_log').fetchone()
    assert reason is not None
    assert "zq-very-secret-token-77" not in reason[0]


def test_deliver_without_a_customers_table_says_what_to_do(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    server, _app = served()
    with pytest.raises(ActivationError, match=r"no customers table .*cdp load run"):
        run(conn, tenant, destination, server, [member(1)])


KILLED_RUN = textwrap.dedent(
    """
    import sys
    import psycopg
    from plugins.activation import DeliverySettings, deliver
    from plugins.core.storage import ObjectStore
    from plugins.manager import activators
    from tests import plugin_examples
    from tests.plugin_examples.http_audience import HttpAudienceSender
    from tests.test_activation_delivery import member
    from tests.test_plugins import _manager_with

    postgres_url, tenant, url, dlq = sys.argv[1:5]
    destination = activators(_manager_with(plugin_examples))["http-audience"]
    settings = {"url": url, "audience_id": "aud-1", "token": "test-token"}
    with psycopg.connect(postgres_url) as conn:
        deliver(conn, tenant, campaign="spring-sale", destination=destination, sender=HttpAudienceSender(settings),
                refresh_id=1, action="add", deliveries=[member(i) for i in range(1, 5001)],
                settings=DeliverySettings(backoff_base_seconds=0.01), sender_settings=settings, dlq=ObjectStore(dlq))
    """
)


def test_a_run_killed_half_way_then_run_again_sends_nobody_twice(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    served: Any,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    make_customers(conn, tenant, 5000)
    # The third request is answered slowly: the run is killed while it waits, its 1000 members written `sending`.
    first_server, first_app = served(FaultPlan(slow_every=1000, slow_burst=998, slow_seconds=3))
    dlq_url = str(tmp_path / "dlq")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            named_session(postgres_url, f"killed-{tenant}"),
            tenant,
            first_server.url,
            dlq_url,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_until(lambda: len(first_app.state.requests) >= 3 or None, 120, "the sandbox to see 3 requests")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    wait_for_session_end(conn, f"killed-{tenant}")
    assert send_log(conn, tenant) == {"accepted": 2000, "sending": 1000}

    second_server, second_app = served()
    dlq = ObjectStore(dlq_url)
    report = run(conn, tenant, destination, second_server, [member(i) for i in range(1, 5001)], dlq=dlq)

    first_ids = [i for r in first_app.state.requests for i in r["ids"]]  # the slow one reached the provider too
    everything = first_ids + received(second_app)
    assert len(everything) == len(set(everything)) == 5000  # nobody twice, and nobody left out
    assert (report.unconfirmed, report.skipped_already_sent, report.accepted) == (1000, 2000, 2000)
    assert send_log(conn, tenant) == {"accepted": 4000, "unconfirmed": 1000}
    batches = list_batches(dlq, DlqFilter(tenant=tenant, error_type=ErrorType.ACTIVATION_FAILED))
    entries = [e for b in batches for e in read_batch(dlq, b.key)]
    assert len(entries) == 1000
    assert {e["context"]["status"] for e in entries} == {"unconfirmed"}
    assert all("may or may not have been delivered" in e["error_message"] for e in entries)
    # A third run finds nothing left to do: the unconfirmed members are support's to resend.
    third = run(conn, tenant, destination, second_server, [member(i) for i in range(1, 5001)], dlq=dlq)
    assert (third.skipped_already_sent, third.requests, third.unconfirmed) == (5000, 0, 0)


@pytest.fixture
def examples_installed() -> Iterator[None]:
    """tests/plugin_examples registered in the process-wide plugin manager, as if installed (the CLI finds it)."""
    from plugins.manager import plugin_manager
    from tests import plugin_examples

    plugin_manager().register(plugin_examples, name="activation-examples")
    try:
        yield
    finally:
        plugin_manager().unregister(name="activation-examples")


def _cdp_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    import orjson

    from plugins.cli.app import main

    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    out = captured.out
    return code, orjson.loads(out) if out.strip().startswith(("{", "[")) else out + captured.err


def test_cdp_dlq_lists_and_reprocess_sends_activation_failed_members_again(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    served: Any,
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    examples_installed: None,
) -> None:
    make_customers(conn, tenant, 1500)
    # An outage of six requests: both batches fail after three attempts; the provider is back for the reprocess.
    server, app = served(FaultPlan(outage_after=0, outage_requests=6), retry_after_seconds=0)
    dlq_url = str(tmp_path / "dlq")
    settings = DeliverySettings(max_attempts=3, backoff_base_seconds=0.01)
    members = [member(i) for i in range(1, 1501)]
    failed = run(conn, tenant, destination, server, members, settings=settings, dlq=ObjectStore(dlq_url))
    assert failed.failed == 1500

    code, listed = _cdp_json(
        ["dlq", "list", "--dlq-url", dlq_url, "--error-type", "activation_failed", "--json"], capsys
    )
    assert code == 0
    batches = listed["batches"]
    assert sum(b["records"] for b in batches) == 1500
    assert {b["provider"] for b in batches} == {"http-audience"}
    code, stats = _cdp_json(["dlq", "stats", "--dlq-url", dlq_url, "--json"], capsys)
    assert code == 0
    assert all(p["dlq_records"] == 0 for p in stats["providers"])  # not a source's validation failures

    code, refused = _cdp_json(["dlq", "reprocess", batches[0]["key"], "--dlq-url", dlq_url, "--json"], capsys)
    assert code == 1
    assert "--postgres-url" in refused["batches"][0]["message"]

    monkeypatch.setenv("CDP_HTTP_AUDIENCE_TOKEN", DEFAULT_TOKEN)  # the secret is never in the dead letter
    code, report = _cdp_json(
        [
            "dlq",
            "reprocess",
            "--error-type",
            "activation_failed",
            "--dlq-url",
            dlq_url,
            "--postgres-url",
            postgres_url,
            "--actor",
            "support",
            "--json",
        ],
        capsys,
    )
    assert code == 0, report
    assert report["totals"] == {"batches": 2, "records": 1500, "passed": 1500, "failed": 0}
    assert sorted(received(app)) == sorted(d.member_id for d in members)
    assert send_log(conn, tenant) == {"accepted": 1500}
    assert list_batches(ObjectStore(dlq_url)) == []  # the sources are retired
    code, audit = _cdp_json(["dlq", "audit", "--dlq-url", dlq_url, "--json"], capsys)
    last = audit["entries"][-1]
    assert (last["action"], last["actor"], last["outcome"]) == ("reprocess", "support", "ok")
    assert sorted(last["batches"]) == sorted(b["key"] for b in batches)


CDP_WITH_EXAMPLES = textwrap.dedent(
    """
    import sys
    from plugins.cli.app import main
    from plugins.manager import plugin_manager
    from tests import plugin_examples

    plugin_manager().register(plugin_examples, name="activation-examples")  # as if the package were installed
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("name", ["http-audience", "http-audience-server"])
def test_cdp_sandbox_serve_serves_a_destinations_sandbox_with_its_faults(name: str, tmp_path: Path) -> None:
    import httpx

    from plugins.connectors.testing import announced_url

    output = tmp_path / "stdout"
    with output.open("wb") as stdout:
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CDP_WITH_EXAMPLES,
                "sandbox",
                "serve",
                name,
                "--port",
                "0",
                "--fault",
                "rate_limit_every=2",
                "--credential",
                "token=tok-1",
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        url = announced_url(server, output)
        sender = HttpAudienceSender({"url": url, "audience_id": "a", "token": "tok-1"})
        try:
            assert [r.member_id for r in sender.add([member(1)])] == ["c1"]
            with pytest.raises(RetryableSendError):
                sender.add([member(2)])  # --fault rate_limit_every=2
        finally:
            sender.close()
        refused = httpx.post(f"{url}/v1/audiences/a/members/add", json={"members": []}, timeout=10)
        assert refused.status_code == 401  # only the --credential token
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_cdp_sandbox_list_names_sources_and_destinations() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CDP_WITH_EXAMPLES, "sandbox", "list", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    kinds = {row["name"]: row["kind"] for row in rows}
    assert kinds["stripe"] == "source"
    # The email destination's SMTP relay answers to the protocol's name too: `cdp sandbox serve smtp`.
    assert {row["name"]: row.get("alias") for row in rows}["email"] == "smtp"
    assert kinds["http-audience"] == kinds["http-audience-server"] == "activation destination"
    assert "jsonl" not in kinds  # no sandbox
