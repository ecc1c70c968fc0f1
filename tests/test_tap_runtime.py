"""The shared tap runtime: retries, throttling, redaction, the DLQ on failure and run budgets, on a throwaway tap."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from singer_sdk import typing as th
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.pagination import BaseAPIPaginator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import SandboxServer
from plugins.connectors.tap_runtime import (
    COMMON_TAP_SETTINGS,
    HTTP_URL_PATTERN,
    CdpRESTStream,
    CdpTap,
    StateTenantMismatchError,
    StreamsFailedError,
)
from plugins.connectors.testing import FakeClock, dead_letters, run_tap
from plugins.core.dead_letters import ErrorType
from plugins.core.errors import ConfigError
from plugins.core.redaction import REDACTED, redact_headers, redact_text, redact_url

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk_live_very_secret_token_123"
ROWS = 30
PAGE = 10


class PagePaginator(BaseAPIPaginator[int]):
    def __init__(self) -> None:
        super().__init__(1)

    def get_next(self, response: Any) -> int | None:
        body = response.json()
        return body["page"] + 1 if body["has_more"] else None


class ThrowawayStream(CdpRESTStream[int]):
    """``GET /<name>?page=N&updated_gte=T``: ascending by ``updated``, so sorted and resumable."""

    replication_key = "updated"
    is_sorted = True
    primary_keys = ("id",)
    records_jsonpath = "$.data[*]"
    schema = th.PropertiesList(th.Property("id", th.IntegerType), th.Property("updated", th.IntegerType)).to_dict()
    backoff_base_seconds = 0.01
    request_timeout_seconds = 0.8

    @property
    def url_base(self) -> str:
        return str(self.config["api_url"])

    @property
    def authenticator(self) -> BearerTokenAuthenticator:
        return BearerTokenAuthenticator(token=self.config["api_key"])

    def get_new_paginator(self) -> PagePaginator:
        return PagePaginator()

    def get_url_params(self, context: Any, next_page_token: int | None) -> dict[str, Any]:
        start = self.get_starting_replication_key_value(context)
        # A secret in the query string as some APIs want it: it must never reach a log or the DLQ.
        return {"page": next_page_token, "updated_gte": start or 0, "api_key": self.config["api_key"]}


def _stream(stream_name: str) -> type[ThrowawayStream]:
    return type(f"{stream_name.title()}Stream", (ThrowawayStream,), {"name": stream_name, "path": f"/{stream_name}"})


class TapThrowaway(CdpTap):
    name = "tap-throwaway"
    config_jsonschema = th.PropertiesList(
        th.Property("api_key", th.StringType(pattern="^sk_"), required=True, secret=True),
        th.Property("api_url", th.StringType(pattern=HTTP_URL_PATTERN), required=True),
        th.Property("streams", th.ArrayType(th.StringType), required=True),
        *COMMON_TAP_SETTINGS,
    ).to_dict()

    def discover_streams(self) -> list[ThrowawayStream]:
        return [_stream(name)(tap=self) for name in self.config["streams"]]


class ScriptedApi:
    """Each path answers from its script first (429, 5xx, slow, 401...), then with real pages."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[str]] = defaultdict(list)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.clock = FakeClock()  # The tap's clock (CdpTap.clock) in the tests that budget a run.
        self.page_seconds: dict[str, float] = {}  # How long a page of that path takes, on that clock.
        self.app = Starlette(routes=[Route("/{name}", self.handle)])

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.calls[name].append(time.monotonic())
        if request.headers.get("authorization") != f"Bearer {SECRET}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        script = self.scripts[name]
        action = script.pop(0) if script else "ok"
        if action == "429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0.3"})
        if action.startswith("5"):
            return JSONResponse({"error": {"message": "oops"}}, status_code=int(action))
        if action == "401":
            return JSONResponse({"error": {"message": "key revoked"}}, status_code=401)
        if action == "slow":
            await asyncio.sleep(1.5)  # A fault: answers later than the client's timeout.
        if action == "garbled":
            return Response(b'{"data": [{"id": 1', media_type="application/json")
        self.clock.advance(self.page_seconds.get(name, 0))
        page = int(request.query_params.get("page", "1"))
        start = int(request.query_params.get("updated_gte", "0"))
        rows = [{"id": i, "updated": 1000 + i} for i in range(ROWS) if 1000 + i >= start]
        chunk = rows[(page - 1) * PAGE : page * PAGE]
        return JSONResponse({"page": page, "has_more": page * PAGE < len(rows), "data": chunk})


@pytest.fixture
def api() -> Iterator[tuple[ScriptedApi, str]]:
    scripted = ScriptedApi()
    with SandboxServer(scripted.app) as server:
        yield scripted, server.url


def _config(url: str, tmp_path: Path, *streams: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": SECRET,
        "api_url": url,
        "streams": list(streams),
        "dlq_url": str(tmp_path / "dlq"),
        "tenant": "acme",
        **extra,
    }


def _run_command_line(
    tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """``TapThrowaway.cli()`` in a subprocess, as Meltano runs a tap, with ``config`` (and ``state``) as files."""
    arguments = ["--config", str(tmp_path / "config.json")]
    (tmp_path / "config.json").write_text(json.dumps(config))
    if state is not None:
        (tmp_path / "state.json").write_text(json.dumps(state))
        arguments += ["--state", str(tmp_path / "state.json")]
    code = "from tests.test_tap_runtime import TapThrowaway; TapThrowaway.cli()"
    return subprocess.run(
        [sys.executable, "-c", code, *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_429_with_retry_after_is_waited_out_then_retried(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["429", "429"]
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    assert run.error is None
    assert run.counts() == {"orders": ROWS}
    first, second, third = scripted.calls["orders"][:3]
    assert second - first >= 0.29
    assert third - second >= 0.29


def test_5xx_burst_is_retried_then_succeeds(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["500", "502", "503"]
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    assert run.error is None
    assert run.counts() == {"orders": ROWS}
    assert len(scripted.calls["orders"]) == 3 + ROWS // PAGE


def test_timeout_is_retried(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["slow"]
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    assert run.error is None
    assert run.counts() == {"orders": ROWS}


def test_malformed_page_is_retried(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["ok", "garbled"]
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    assert run.error is None
    assert run.counts() == {"orders": ROWS}


def test_exhausted_retries_write_one_redacted_dlq_entry_and_other_streams_complete(
    api: tuple[ScriptedApi, str], tmp_path: Path
) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["ok", "503", "503", "503", "503", "503"]
    state = {"bookmarks": {"orders": {"replication_key": "updated", "replication_key_value": 1002}}}
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders", "customers"), state=state)

    assert isinstance(run.error, StreamsFailedError)
    assert "orders: extraction_failed" in str(run.error)
    assert run.counts()["customers"] == ROWS
    assert run.bookmark("orders") == 1002  # not advanced past what the run found, though a page was emitted
    assert run.bookmark("customers") == 1000 + ROWS - 1
    [entry] = dead_letters(tmp_path / "dlq")
    assert entry["error_type"] == "extraction_failed"
    assert entry["tenant"] == "acme"
    assert entry["provider"] == "throwaway"
    assert entry["stream"] == "orders"
    assert entry["record"]["method"] == "GET"
    assert entry["record"]["params"]["page"] == "2"
    assert entry["record"]["params"]["api_key"] == REDACTED
    assert entry["context"]["attempts"] == 4  # the first try and 3 retries
    assert entry["context"]["status"] == 503
    assert entry["context"]["bookmark"]["replication_key_value"] == 1002
    dlq_text = json.dumps(dead_letters(tmp_path / "dlq"))
    assert SECRET not in dlq_text
    assert SECRET not in str(run.error)


def test_throttled_past_retries_is_rate_limit_exhausted(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["429"] * 20
    original = ThrowawayStream.throttle_max_retries
    ThrowawayStream.throttle_max_retries = 2
    try:
        run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    finally:
        ThrowawayStream.throttle_max_retries = original
    assert isinstance(run.error, StreamsFailedError)
    [entry] = dead_letters(tmp_path / "dlq")
    assert entry["error_type"] == ErrorType.RATE_LIMIT_EXHAUSTED.value
    assert entry["context"]["attempts"] == 3
    assert entry["context"]["status"] == 429


def test_401_is_auth_failed_without_retries(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["401"]
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders", "customers"))
    assert isinstance(run.error, StreamsFailedError)
    assert run.counts() == {"customers": ROWS}
    [entry] = dead_letters(tmp_path / "dlq")
    assert entry["error_type"] == "auth_failed"
    assert entry["context"]["attempts"] == 1
    assert len(scripted.calls["orders"]) == 1


def test_command_line_exits_non_zero_with_one_line_summary_and_no_secret(
    api: tuple[ScriptedApi, str], tmp_path: Path
) -> None:
    scripted, url = api
    scripted.scripts["orders"] = ["500"] * 10
    result = _run_command_line(tmp_path, _config(url, tmp_path, "orders", "customers"))
    assert result.returncode == 1
    summary = [line for line in result.stderr.splitlines() if "stream(s) failed" in line]
    assert len(summary) == 1
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
    assert SECRET not in result.stdout
    records = [json.loads(line) for line in result.stdout.splitlines() if '"RECORD"' in line]
    assert {record["stream"] for record in records} == {"customers"}


def test_max_runtime_stops_between_pages_with_resumable_state(
    api: tuple[ScriptedApi, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted, url = api
    scripted.page_seconds["orders"] = 0.6  # streams run in name order: orders, then payouts
    with monkeypatch.context() as patched:
        patched.setattr(TapThrowaway, "clock", staticmethod(scripted.clock))
        first = run_tap(TapThrowaway, _config(url, tmp_path, "orders", "payouts", max_runtime_seconds=1))
    assert first.error is None
    emitted = first.counts()["orders"]
    assert 0 < emitted < ROWS
    assert "payouts" not in first.counts()  # deferred to the next run
    assert first.bookmark("orders") == 1000 + emitted - 1

    second = run_tap(TapThrowaway, _config(url, tmp_path, "orders", "payouts"), state=first.last_state)
    ids = [record["id"] for record in first.records("orders")] + [r["id"] for r in second.records("orders")]
    assert set(ids) == set(range(ROWS))  # no gap; the bookmark's own row is re-sent by Singer convention
    assert second.counts()["payouts"] == ROWS


def test_redaction_of_urls_headers_and_text() -> None:
    url = redact_url(f"https://user:pw@api.example.com/v1/x?limit=5&access_token={SECRET}")
    assert url == f"https://api.example.com/v1/x?limit=5&access_token={REDACTED}"
    headers = redact_headers({"Authorization": f"Bearer {SECRET}", "X-Shopify-Access-Token": SECRET, "Accept": "a"})
    assert headers == {"Authorization": REDACTED, "X-Shopify-Access-Token": REDACTED, "Accept": "a"}
    assert SECRET not in redact_text(f"failed: Authorization: Bearer {SECRET}")
    assert SECRET not in redact_text(f"GET /x?refresh_token={SECRET}&a=1")
    assert redact_text("key is hunter22 here", ["hunter22"]) == f"key is {REDACTED} here"


def test_a_bad_url_setting_fails_fast_naming_the_setting(tmp_path: Path) -> None:
    run = run_tap(TapThrowaway, _config("localhost:8080", tmp_path, "orders"))
    assert isinstance(run.error, ConfigError)
    assert run.error.setting == "api_url"
    assert run.messages == []


def test_state_records_the_tenant_and_a_state_of_another_tenant_is_refused(
    api: tuple[ScriptedApi, str], tmp_path: Path
) -> None:
    _, url = api
    first = run_tap(TapThrowaway, _config(url, tmp_path, "orders"))
    assert first.error is None
    assert first.last_state is not None
    assert first.last_state["tenant"] == "acme"
    assert all(state.get("tenant") == "acme" for state in first.states)

    other = run_tap(TapThrowaway, _config(url, tmp_path, "orders", tenant="globex"), state=first.last_state)
    assert isinstance(other.error, StateTenantMismatchError)
    message = str(other.error)
    assert "'acme'" in message
    assert "'globex'" in message
    assert "meltano state clear" in message
    assert "\n" not in message
    assert other.records() == []

    same = run_tap(TapThrowaway, _config(url, tmp_path, "orders"), state=first.last_state)
    assert same.error is None
    assert same.bookmark("orders") == 1000 + ROWS - 1


def test_a_state_without_a_tenant_is_taken_as_this_tenants(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    _, url = api
    legacy = {"bookmarks": {"orders": {"replication_key": "updated", "replication_key_value": 1020}}}
    run = run_tap(TapThrowaway, _config(url, tmp_path, "orders"), state=legacy)
    assert run.error is None
    assert run.counts() == {"orders": ROWS - 20}
    assert run.last_state is not None
    assert run.last_state["tenant"] == "acme"


def test_command_line_refuses_another_tenants_state_in_one_line(api: tuple[ScriptedApi, str], tmp_path: Path) -> None:
    _, url = api
    state = {"tenant": "acme", "bookmarks": {}}
    result = _run_command_line(tmp_path, _config(url, tmp_path, "orders", tenant="globex"), state)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "tenant" in line]
    assert "'acme'" in line
    assert "'globex'" in line
    assert '"RECORD"' not in result.stdout


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("max_runtime_seconds", 0, "less than or equal to the minimum of 0"),
        ("api_url", "localhost:8080", "does not match the pattern"),
        ("streams", "orders", "is not of type 'array'"),
    ],
)
def test_settings_outside_config_jsonschema_limits_are_one_line_config_errors(
    tmp_path: Path, setting: str, value: Any, problem: str | None
) -> None:
    config = {**_config("https://api.example.com", tmp_path, "orders"), setting: value}
    run = run_tap(TapThrowaway, config)
    assert isinstance(run.error, ConfigError)
    assert run.error.setting == setting
    assert "\n" not in str(run.error)
    if problem:
        assert problem in str(run.error)
    assert run.messages == []


def test_a_secret_setting_that_breaks_its_pattern_is_named_but_never_shown(tmp_path: Path) -> None:
    run = run_tap(TapThrowaway, {**_config("https://api.example.com", tmp_path, "orders"), "api_key": "pk_live_oops"})
    assert isinstance(run.error, ConfigError)
    assert run.error.setting == "api_key"
    assert "pk_live_oops" not in str(run.error)
    assert REDACTED in str(run.error)


def test_a_missing_required_setting_is_named(tmp_path: Path) -> None:
    config = _config("https://api.example.com", tmp_path, "orders")
    del config["api_key"]
    run = run_tap(TapThrowaway, config)
    assert isinstance(run.error, ConfigError)
    assert run.error.setting == "api_key"
    assert "is required" in str(run.error)
