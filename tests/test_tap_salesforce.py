"""tap-salesforce against its sandbox: discovery, REST and Bulk paths, increments, resumes, throttling, the DLQ."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.connectors.tap_runtime import ExtractionFailure, StreamsFailedError
from plugins.connectors.testing import FakeClock, TapRun, dead_letters, run_tap, run_tap_process, start_tap_process
from plugins.core.errors import ConfigError
from taps.salesforce.client import SalesforceStream, format_datetime
from taps.salesforce.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    SalesforceState,
    create_sandbox,
)
from taps.salesforce.streams import DEFAULT_OBJECTS, QueryPaginator
from taps.salesforce.tap import TapSalesforce

StartSandbox = Callable[..., SandboxServer]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries keep their count and order; only the waits shrink, so the tests stay fast."""
    monkeypatch.setattr(SalesforceStream, "backoff_base_seconds", 0.01)


@pytest.fixture
def start_sandbox() -> Iterator[StartSandbox]:
    """Starts Salesforce sandboxes (small pages so every sync pages) and stops them after the test."""
    with ExitStack() as stack:

        def start(records: int = 120, page_size: int = 50, faults: FaultPlan | None = None, **kw: Any) -> Any:
            options = SandboxOptions(records=records, faults=faults or FaultPlan())
            app = create_sandbox(options, page_size=page_size, **kw)
            return stack.enter_context(SandboxServer(app))

        yield start


def org(server: SandboxServer) -> SalesforceState:
    return server.app.state.salesforce  # type: ignore[attr-defined, no-any-return]


def live_ids(server: SandboxServer, sobject: str) -> set[str]:
    return {rid for rid, row in org(server).org.rows[sobject].items() if not row["IsDeleted"]}


def config(server: SandboxServer, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The refresh-token flow against the sandbox; the instance URL comes from the token response."""
    return {
        "token_url": f"{server.url}/services/oauth2/token",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "refresh_token": DEFAULT_REFRESH_TOKEN,
        "dlq_url": str(tmp_path / "dlq"),
        "bulk_poll_interval_seconds": 0.01,
        "page_size": 200,
        **overrides,
    }


def ids(run: TapRun, stream: str) -> set[str]:
    return {record["Id"] for record in run.records(stream)}


def api(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"}
    response = requests.request(
        method, f"{server.url}/services/data/v62.0{path}", headers=headers, timeout=10, **kwargs
    )
    response.raise_for_status()
    return response


def test_full_sync_emits_every_live_row_of_each_object(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox()
    run = run_tap(TapSalesforce, config(server, tmp_path))
    assert run.error is None
    assert run.counts() == {name: len(live_ids(server, name)) for name in DEFAULT_OBJECTS}
    for name in DEFAULT_OBJECTS:
        assert ids(run, name) == live_ids(server, name)


def test_schemas_come_from_describe_with_custom_fields_and_faithful_types(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    server = start_sandbox(records=5)
    properties = TapSalesforce(config=config(server, tmp_path)).streams["Account"].schema["properties"]
    assert properties["Customer_Tier__c"]["type"] == ["string", "null"]  # custom picklist
    assert properties["Churn_Risk__c"]["type"] == ["number", "null"]  # custom percent
    assert properties["First_Purchase__c"]["format"] == "date"
    assert properties["Is_Partner__c"]["type"] == "boolean"  # not nillable
    assert properties["NumberOfEmployees"]["type"] == ["integer", "null"]
    assert properties["AnnualRevenue"]["type"] == ["number", "null"]  # currency
    assert properties["SystemModstamp"] == {
        "type": "string",
        "format": "date-time",
        "title": "System Modstamp",
        "x-salesforce-type": "datetime",
    }
    assert properties["BillingAddress"]["properties"]["postalCode"]["type"] == ["string", "null"]
    assert properties["HQ_Location__c"]["properties"]["latitude"]["type"] == ["number", "null"]


def test_incremental_rerun_emits_only_changed_rows(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox()
    first = run_tap(TapSalesforce, config(server, tmp_path))
    changed = sorted(live_ids(server, "Contact"))[:3]
    for record_id in changed:
        api(server, "PATCH", f"/sobjects/Contact/{record_id}", json={"Preferred_Language__c": "ja"})

    second = run_tap(TapSalesforce, config(server, tmp_path), state=first.last_state)

    assert second.error is None
    for name in DEFAULT_OBJECTS:
        # ">=" on the bookmark re-reads the rows stamped exactly at it (at-least-once), and nothing older.
        at_bookmark = {r["Id"] for r in first.records(name) if r["SystemModstamp"] == first.bookmark(name)}
        expected = at_bookmark | (set(changed) if name == "Contact" else set())
        assert ids(second, name) == expected, name
    assert {r["Preferred_Language__c"] for r in second.records("Contact") if r["Id"] in changed} == {"ja"}


def test_bulk_api_above_threshold_yields_the_same_records_as_rest(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox()
    rest = run_tap(TapSalesforce, config(server, tmp_path))
    settings = config(server, tmp_path, bulk_threshold=10, bulk_max_records=40, bulk_window_days=0)
    bulk = run_tap(TapSalesforce, settings)

    assert bulk.error is None
    assert org(server).bulk_jobs_created == len(DEFAULT_OBJECTS)
    assert org(server).jobs == {}  # Every job is deleted once its results are read.
    for name in DEFAULT_OBJECTS:
        by_id = {record["Id"]: record for record in rest.records(name)}
        assert {record["Id"]: record for record in bulk.records(name)} == by_id, name
        assert bulk.bookmark(name) == rest.bookmark(name)


def test_bulk_sync_checkpoints_each_window_and_resumes_after_the_last_complete_one(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_sandbox(records=200, faults=FaultPlan(slow_every=2, slow_seconds=0.3))
    windowed = {"bulk_threshold": 10, "bulk_window_days": 0.5, "start_date": "2024-01-01T00:00:00Z"}
    with monkeypatch.context() as patched:  # Each look at the clock costs a quarter second: out after a few windows.
        patched.setattr(TapSalesforce, "clock", staticmethod(FakeClock(tick=0.25)))
        stopped = run_tap(TapSalesforce, config(server, tmp_path, max_runtime_seconds=3, **windowed))
    assert stopped.error is None
    bookmark = stopped.bookmark("Account")
    assert bookmark is not None
    stamps = {rid: row["SystemModstamp"] for rid, row in org(server).org.rows["Account"].items()}
    before = {rid for rid in live_ids(server, "Account") if format_datetime(stamps[rid]) < bookmark}
    assert before <= ids(stopped, "Account")  # Windows before the bookmark were complete.
    assert len(ids(stopped, "Account")) < len(live_ids(server, "Account"))

    org(server).faults = FaultPlan()
    resumed = run_tap(TapSalesforce, config(server, tmp_path, **windowed), state=stopped.last_state)
    assert resumed.error is None
    for name in DEFAULT_OBJECTS:
        assert ids(stopped, name) | ids(resumed, name) == live_ids(server, name), name
    assert all(record["SystemModstamp"] >= bookmark for record in resumed.records("Account"))


def test_query_all_includes_deleted_rows(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox()
    everything = run_tap(TapSalesforce, config(server, tmp_path, query_all=True))
    deleted = {rid for rid, row in org(server).org.rows["Lead"].items() if row["IsDeleted"]}
    assert deleted
    assert ids(everything, "Lead") == set(org(server).org.rows["Lead"])
    assert {r["IsDeleted"] for r in everything.records("Lead") if r["Id"] in deleted} == {True}

    victim = sorted(live_ids(server, "Lead"))[0]
    api(server, "DELETE", f"/sobjects/Lead/{victim}")
    with_deleted = run_tap(TapSalesforce, config(server, tmp_path, query_all=True), state=everything.last_state)
    without = run_tap(TapSalesforce, config(server, tmp_path), state=everything.last_state)
    assert victim in ids(with_deleted, "Lead")
    assert victim not in ids(without, "Lead")


def test_expired_session_is_refreshed_and_the_request_retried(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(
        faults=FaultPlan(session_uses=5)
    )  # Each access token dies after 5 calls (401 INVALID_SESSION_ID).
    run = run_tap(TapSalesforce, config(server, tmp_path))
    assert run.error is None
    assert run.counts() == {name: len(live_ids(server, name)) for name in DEFAULT_OBJECTS}
    assert org(server).token_requests > 3


def test_rejected_static_access_token_is_auth_failed_in_the_dlq_without_the_token(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    server = start_sandbox(faults=FaultPlan(session_uses=10))  # Lasts through discovery and the first object, then 401.
    settings = {"access_token": DEFAULT_ACCESS_TOKEN, "instance_url": server.url, "dlq_url": str(tmp_path / "dlq")}
    run = run_tap(TapSalesforce, settings)
    assert isinstance(run.error, StreamsFailedError)
    letters = dead_letters(tmp_path / "dlq")
    assert letters
    assert {letter["error_type"] for letter in letters} == {"auth_failed"}
    assert {letter["context"]["status"] for letter in letters} == {401}
    assert DEFAULT_ACCESS_TOKEN not in json.dumps(letters)
    assert DEFAULT_ACCESS_TOKEN not in run.stderr


def test_request_limit_exceeded_is_backed_off_and_retried(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(faults=FaultPlan(rate_limit_every=4))  # 403 REQUEST_LIMIT_EXCEEDED on every 4th call.
    run = run_tap(TapSalesforce, config(server, tmp_path))
    assert run.error is None
    assert org(server).injected["request_limit"] >= 5
    assert run.counts() == {name: len(live_ids(server, name)) for name in DEFAULT_OBJECTS}


def test_server_errors_timeouts_and_malformed_pages_are_retried(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    faults = FaultPlan(server_error_every=5, malformed_every=7, slow_every=13, slow_seconds=1.0)
    server = start_sandbox(faults=faults)
    run = run_tap(TapSalesforce, config(server, tmp_path, request_timeout_seconds=0.3))
    assert run.error is None
    assert {"server_error", "malformed", "slow"} <= set(org(server).injected)
    for name in DEFAULT_OBJECTS:
        assert ids(run, name) == live_ids(server, name)


def test_a_burst_of_three_server_errors_is_absorbed_by_the_retries(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(faults=FaultPlan(outage_after=8, outage_requests=3))  # Mid-way through Account.
    run = run_tap(TapSalesforce, config(server, tmp_path))
    assert run.error is None
    assert org(server).injected["server_error"] == 3
    assert ids(run, "Account") == live_ids(server, "Account")


def test_exhausted_retries_write_one_dlq_entry_while_other_objects_complete(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    server = start_sandbox(faults=FaultPlan(failing=("Lead",)))  # Every Lead query answers 503.
    run = run_tap(TapSalesforce, config(server, tmp_path))

    assert isinstance(run.error, StreamsFailedError)
    assert [failure.stream for failure in run.error.failures] == ["Lead"]
    assert run.counts() == {name: len(live_ids(server, name)) for name in DEFAULT_OBJECTS if name != "Lead"}
    assert "Lead" not in (run.last_state or {})["bookmarks"]
    [letter] = dead_letters(tmp_path / "dlq")
    assert letter["error_type"] == "extraction_failed"
    assert letter["stream"] == "Lead"
    assert letter["context"]["attempts"] == 4  # The first try and 3 retries.
    assert letter["context"]["status"] == 503
    assert letter["record"]["method"] == "GET"
    assert "SELECT COUNT() FROM Lead" in letter["record"]["params"]["q"]


def test_persistent_throttling_ends_as_rate_limit_exhausted(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(faults=FaultPlan(throttled=("Campaign",)))
    run = run_tap(TapSalesforce, config(server, tmp_path))
    assert isinstance(run.error, StreamsFailedError)
    [letter] = dead_letters(tmp_path / "dlq")
    assert (letter["stream"], letter["error_type"]) == ("Campaign", "rate_limit_exhausted")
    assert ids(run, "Contact") == live_ids(server, "Contact")


def test_api_usage_past_max_percent_stops_extraction(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(api_daily_limit=100)  # Discovery and a few objects use about half of it.
    run = run_tap(TapSalesforce, config(server, tmp_path, max_api_usage_percent=25))
    assert isinstance(run.error, StreamsFailedError)
    assert {letter["error_type"] for letter in dead_letters(tmp_path / "dlq")} == {"rate_limit_exhausted"}
    assert org(server).api_usage <= 40


def test_max_runtime_stop_resumes_mid_object(
    start_sandbox: StartSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_sandbox(records=300, faults=FaultPlan(slow_every=2, slow_seconds=0.6))
    with monkeypatch.context() as patched:  # Each look at the clock costs a quarter second: out after a few pages.
        patched.setattr(TapSalesforce, "clock", staticmethod(FakeClock(tick=0.25)))
        stopped = run_tap(TapSalesforce, config(server, tmp_path, max_runtime_seconds=1))
    assert stopped.error is None
    first_stream = "Account"  # Streams sync in name order.
    assert 0 < len(ids(stopped, first_stream)) < len(live_ids(server, first_stream))

    org(server).faults = FaultPlan()  # The org answers quickly again.
    resumed = run_tap(TapSalesforce, config(server, tmp_path), state=stopped.last_state)
    for name in DEFAULT_OBJECTS:
        assert ids(stopped, name) | ids(resumed, name) == live_ids(server, name), name
    at_bookmark = {
        r["Id"] for r in stopped.records(first_stream) if r["SystemModstamp"] == stopped.bookmark(first_stream)
    }
    assert ids(stopped, first_stream) & ids(resumed, first_stream) == at_bookmark


def test_resume_after_kill_mid_run(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(records=150, faults=FaultPlan(slow_every=2, slow_seconds=0.2))
    process = start_tap_process("tap-salesforce", config(server, tmp_path))
    process.wait_for('"Account":{"replication_key"', timeout=60)  # Account's bookmark is out; others still to go.
    killed = process.kill()
    assert killed.exit_code != 0
    assert len(killed.counts()) < len(DEFAULT_OBJECTS)

    org(server).faults = FaultPlan()
    resumed = run_tap(TapSalesforce, config(server, tmp_path), state=killed.last_state)
    assert resumed.error is None
    for name in DEFAULT_OBJECTS:
        assert ids(killed, name) | ids(resumed, name) == live_ids(server, name), name
    assert len(ids(resumed, "Account")) <= 2  # Only the rows stamped at the bookmark are read again.
    for secret in (DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN, *org(server).tokens):
        assert secret not in killed.stderr


def test_failed_objects_exit_non_zero_with_a_one_line_summary_and_no_secrets(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    # The static token dies after discovery and the first objects: the later ones fail as auth_failed.
    server = start_sandbox(records=30, faults=FaultPlan(session_uses=12))
    settings = {"access_token": DEFAULT_ACCESS_TOKEN, "instance_url": server.url, "dlq_url": str(tmp_path / "dlq")}
    run = run_tap_process("tap-salesforce", settings, timeout=90)
    assert run.exit_code == 1
    [summary] = [line for line in run.stderr.splitlines() if "stream(s) failed" in line]
    assert "Opportunity: auth_failed" in summary
    assert run.counts()["Account"] == len(live_ids(server, "Account"))
    assert DEFAULT_ACCESS_TOKEN not in run.stderr
    assert DEFAULT_ACCESS_TOKEN not in json.dumps(dead_letters(tmp_path / "dlq"))


def test_missing_credentials_fail_fast_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client_secret"):
        TapSalesforce(config={"client_id": "x", "refresh_token": "y", "dlq_url": str(tmp_path)})


def test_access_token_without_instance_url_fails_naming_instance_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="instance_url"):
        TapSalesforce(config={"access_token": "00Dx!y", "dlq_url": str(tmp_path)})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("api_version", "39.0"),
        ("api_version", "v46.0"),
        ("page_size", 5000),
        ("page_size", 100),
        ("bulk_max_records", 0),
        ("bulk_window_days", -1),
        ("max_api_usage_percent", 150),
        ("max_api_usage_percent", 0),
        ("objects", ["Account", "Bad Name"]),
        ("token_url", "login.salesforce.com/services/oauth2/token"),
    ],
)
def test_out_of_range_settings_fail_fast_naming_the_setting(
    start_sandbox: StartSandbox, tmp_path: Path, setting: str, value: object
) -> None:
    server = start_sandbox(records=5)
    with pytest.raises(ConfigError, match=setting):
        TapSalesforce(config=config(server, tmp_path, **{setting: value}))


def test_unknown_object_fails_fast_naming_objects(start_sandbox: StartSandbox, tmp_path: Path) -> None:
    server = start_sandbox(records=5)
    with pytest.raises(ConfigError, match=r"objects.*Invoice__c"):
        TapSalesforce(config=config(server, tmp_path, objects=["Account", "Invoice__c"]))


def test_discovery_requests_take_the_runtimes_retry_path(
    start_sandbox: StartSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first data calls are Account's describe: three 503s, retried and logged like any other request.
    server = start_sandbox(faults=FaultPlan(outage_after=0, outage_requests=3))
    run = run_tap(TapSalesforce, config(server, tmp_path, objects=["Account"]))
    assert run.error is None, run.stderr[-2000:]
    assert ids(run, "Account") == live_ids(server, "Account")
    messages = [record.getMessage() for record in caplog.records]
    retries = [line for line in messages if "tap.retry" in line and "/sobjects/Account/describe" in line]
    assert len(retries) == 3


def _query_page(next_url: object) -> requests.Response:
    response = requests.Response()
    response._content = json.dumps({"done": False, "records": [], "nextRecordsUrl": next_url}).encode()
    return response


@pytest.mark.parametrize(
    "next_url", ["@evil.example/steal", "//evil.example/x", "https://evil.example/services/data/v62.0/query/1-2", 7]
)
def test_a_next_records_url_that_would_leave_the_instance_is_refused(next_url: object) -> None:
    # It is appended to instance_url and sent with the access token: https://org.my.salesforce.com@evil.example/...
    with pytest.raises(ExtractionFailure, match="not a query locator path"):
        QueryPaginator().get_next(_query_page(next_url))


def test_a_next_records_url_that_is_a_query_locator_is_followed() -> None:
    locator = "/services/data/v62.0/query/01gD0000002HU6KIAW-2000"
    assert QueryPaginator().get_next(_query_page(locator)) == locator
