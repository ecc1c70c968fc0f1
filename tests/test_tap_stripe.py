"""tap-stripe against its local sandbox: full and incremental syncs, resume after a kill, throttling, failures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.connectors.tap_runtime import StreamsFailedError
from plugins.connectors.testing import FakeClock, dead_letters, run_tap, start_tap_process
from plugins.core.errors import ConfigError
from taps.stripe.client import StripeStream
from taps.stripe.sandbox import StripeState, create_sandbox
from taps.stripe.streams import STREAM_TYPES
from taps.stripe.tap import TapStripe

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc_cdp"
RECORDS = 120


class RecordingApp:
    """Wraps the sandbox to record (monotonic time, path, status) of every answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[float, str, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.log.append((time.monotonic(), scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, record)


def _serve(**faults: Any) -> tuple[SandboxServer, StripeState, RecordingApp]:
    plan = FaultPlan.from_mapping(faults)
    app = create_sandbox(SandboxOptions(records=RECORDS, credentials={"api_key": API_KEY}, faults=plan))
    recording = RecordingApp(app)
    return SandboxServer(recording), app.state.stripe, recording


@pytest.fixture
def sandbox() -> Iterator[tuple[str, StripeState]]:
    server, state, _ = _serve()
    with server:
        yield server.url, state


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StripeStream, "backoff_base_seconds", 0.02)
    monkeypatch.setattr(StripeStream, "request_timeout_seconds", 0.5)


def _config(url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": API_KEY,
        "api_url": url,
        "start_date": "2024-01-01T00:00:00Z",
        "dlq_url": str(tmp_path / "dlq"),
        "tenant": "acme",
        **extra,
    }


def test_full_sync_emits_every_object_of_every_stream(sandbox: tuple[str, StripeState], tmp_path: Path) -> None:
    url, state = sandbox
    run = run_tap(TapStripe, _config(url, tmp_path))
    assert run.error is None
    assert run.counts() == {name: len(objects) for name, objects in state.objects.items()}
    assert {stream.name for stream in STREAM_TYPES} == set(state.objects)
    canceled = [s for s in run.records("subscriptions") if s["status"] == "canceled"]
    assert canceled, "canceled subscriptions are extracted too (status=all)"
    assert all(isinstance(charge["customer"], str) for charge in run.records("charges"))  # expandables stay ids


def test_incremental_rerun_emits_only_new_customers_and_changes_as_events(
    sandbox: tuple[str, StripeState], tmp_path: Path
) -> None:
    url, state = sandbox
    first = run_tap(TapStripe, _config(url, tmp_path))
    assert first.error is None
    headers = {"Authorization": f"Bearer {API_KEY}"}
    new_ids = [
        requests.post(f"{url}/v1/customers", data={"name": f"Zoë Nguyễn {i}"}, headers=headers, timeout=5).json()["id"]
        for i in range(3)
    ]
    changed = state.customers[-1]["id"]
    requests.post(f"{url}/v1/customers/{changed}", data={"email": "moved@example.org"}, headers=headers, timeout=5)

    second = run_tap(TapStripe, _config(url, tmp_path), state=first.last_state)
    assert second.error is None
    assert sorted(c["id"] for c in second.records("customers")) == sorted(new_ids)
    for stream in ("charges", "invoices", "subscriptions", "payment_intents", "products", "prices", "refunds"):
        assert stream not in second.counts()
    events = {(e["type"], e["data"]["object"]["id"]) for e in second.records("events")}
    assert {("customer.created", cid) for cid in new_ids} <= events
    assert ("customer.updated", changed) in events
    assert len(second.records("events")) <= 4 + 1  # the changes, plus at most the bookmark's own event re-sent


def test_resume_after_kill_mid_run_leaves_no_gap(tmp_path: Path) -> None:
    # Slow customer pages and one-day windows: the kill lands between checkpoints of the customers stream.
    server, state, _ = _serve(slow_every=1, slow_seconds=0.15, only=("/v1/customers",))
    with server:
        catalog_streams = {"customers"}
        config = _config(server.url, tmp_path, window_days=1)
        process = start_tap_process("tap-stripe", config)
        # Killed as soon as a window checkpoint is out: the next slow page is still being fetched.
        process.wait_for_state(lambda run: run.bookmark("customers") is not None, 60, "a customers checkpoint")
        killed = process.kill()
        assert killed.exit_code == -9
        checkpoint = killed.bookmark("customers")
        assert checkpoint is not None, "a window checkpoint was written before the kill"
        first_ids = {c["id"] for c in killed.records("customers")}
        assert 0 < len(first_ids) < RECORDS

        resumed = start_tap_process("tap-stripe", config, state=killed.last_state).wait(timeout=120)
        assert resumed.exit_code == 0, resumed.stderr[-2000:]
        second_ids = {c["id"] for c in resumed.records("customers")}
        assert first_ids | second_ids == {c["id"] for c in state.customers}
        assert len(second_ids) < RECORDS  # it resumed rather than starting over
        assert all(c["created"] >= checkpoint for c in resumed.records("customers"))
        assert catalog_streams <= set(resumed.counts())


def test_throttling_is_obeyed_with_backoff(fast_backoff: None, tmp_path: Path) -> None:
    server, state, recording = _serve(rate_limit_every=4, rate_limit_burst=2)
    with server:
        run = run_tap(TapStripe, _config(server.url, tmp_path))
    assert run.error is None
    assert run.counts() == {name: len(objects) for name, objects in state.objects.items()}
    throttled = [i for i, (_, _, status) in enumerate(recording.log) if status == 429]
    assert throttled
    for i in throttled:
        if i + 1 < len(recording.log) and recording.log[i + 1][1] == recording.log[i][1]:
            assert recording.log[i + 1][0] - recording.log[i][0] >= 0.01  # waited before retrying


def test_5xx_bursts_slow_pages_and_malformed_pages_are_retried(fast_backoff: None, tmp_path: Path) -> None:
    # Per path: requests 9, 10, 19, 20 answer 500; 7 and 14 are slower than the client's timeout; 5, 15 are cut off.
    server, state, _ = _serve(
        server_error_every=10, server_error_burst=2, slow_every=7, slow_seconds=0.7, malformed_every=5
    )
    with server:
        run = run_tap(TapStripe, _config(server.url, tmp_path))
    assert run.error is None
    assert run.counts() == {name: len(objects) for name, objects in state.objects.items()}
    assert max(state.requests_by_path.values()) >= 9  # every kind of fault was served at least once


def test_exhausted_retries_write_dlq_entry_keep_bookmark_and_exit_non_zero(tmp_path: Path) -> None:
    server, state, _ = _serve(server_error_every=1, only=("/v1/charges",))
    with server:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(_config(server.url, tmp_path)))
        state_path = tmp_path / "state.json"
        bookmark = {"replication_key": "created", "replication_key_value": 1_704_067_200}
        state_path.write_text(json.dumps({"bookmarks": {"charges": bookmark}}))
        code = (
            "from taps.stripe.client import StripeStream; StripeStream.backoff_base_seconds = 0.02; "
            "from taps.stripe.tap import TapStripe; TapStripe.cli()"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, "--config", str(config_path), "--state", str(state_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "1 stream(s) failed" in result.stderr
    assert "charges: extraction_failed" in result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    counts: dict[str, int] = {}
    for message in messages:
        if message["type"] == "RECORD":
            counts[message["stream"]] = counts.get(message["stream"], 0) + 1
    assert counts == {name: len(objects) for name, objects in state.objects.items() if name != "charges"}
    final_state = [m["value"] for m in messages if m["type"] == "STATE"][-1]
    assert final_state["bookmarks"]["charges"] == bookmark
    [entry] = dead_letters(tmp_path / "dlq")
    assert entry["error_type"] == "extraction_failed"
    assert entry["provider"] == "stripe"
    assert entry["stream"] == "charges"
    assert entry["context"]["attempts"] == 4
    assert entry["context"]["status"] == 500
    assert entry["context"]["window"]["created[gte]"] == 1_704_067_200
    assert entry["record"]["url"].startswith(f"{server.url}/v1/charges?")
    assert API_KEY not in result.stderr
    assert API_KEY not in json.dumps(entry)


def test_revoked_key_is_auth_failed_for_each_stream_and_never_logged(tmp_path: Path) -> None:
    server, _, _ = _serve()
    with server:
        run = run_tap(TapStripe, _config(server.url, tmp_path, api_key="sk_live_revoked_0123456789"))
    assert isinstance(run.error, StreamsFailedError)
    entries = dead_letters(tmp_path / "dlq")
    assert {entry["error_type"] for entry in entries} == {"auth_failed"}
    assert {entry["stream"] for entry in entries} == {stream.name for stream in STREAM_TYPES}
    assert "sk_live_revoked_0123456789" not in json.dumps(entries)
    assert "sk_live_revoked_0123456789" not in str(run.error)


def test_max_runtime_stops_cleanly_and_the_next_run_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, state, _ = _serve(slow_every=1, slow_seconds=0.1, only=("/v1/charges",))
    with server:
        config = _config(server.url, tmp_path, window_days=1, max_runtime_seconds=1)
        with monkeypatch.context() as patched:  # Each look at the clock costs a quarter second: out after a few pages.
            patched.setattr(TapStripe, "clock", staticmethod(FakeClock(tick=0.25)))
            first = run_tap(TapStripe, config)
        assert first.error is None
        assert "customers" not in first.counts()  # charges comes first; the run stopped inside it
        second = run_tap(TapStripe, {**config, "max_runtime_seconds": 600}, state=first.last_state)
    ids = {c["id"] for c in first.records("charges")} | {c["id"] for c in second.records("charges")}
    assert ids == {c["id"] for c in state.objects["charges"]}
    assert second.counts()["customers"] == RECORDS


@pytest.mark.parametrize(
    ("setting", "value"), [("window_days", 0), ("window_days", -3), ("api_version", "June 2024"), ("api_url", "api")]
)
def test_settings_outside_their_limits_fail_fast_naming_the_setting(tmp_path: Path, setting: str, value: Any) -> None:
    run = run_tap(TapStripe, _config("https://api.stripe.com", tmp_path, **{setting: value}))
    assert isinstance(run.error, ConfigError)
    assert run.error.setting == setting
    assert run.messages == []
