"""Alerts from target-s3raw: the Slack-compatible webhook sink and the per-run DLQ volume threshold."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from plugins.alerts import SlackWebhookAlertSink, cdp_alert_sinks
from plugins.connectors.sandbox import SandboxServer
from plugins.descriptors import Alert, Severity
from tests.s3raw_support import CUSTOMERS_SCHEMA, dead_letters, record_message, run_target, schema_message, zone_config


class IncomingWebhook:
    """A Slack-style incoming webhook: POST JSON ``{"text": ...}``, answers ``ok`` (or fails on /broken)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/services/T000/B000/XXX", self.receive, methods=["POST"]),
                Route("/broken", self.broken, methods=["POST"]),
            ]
        )

    async def receive(self, request: Request) -> PlainTextResponse:
        self.posts.append(await request.json())
        return PlainTextResponse("ok")

    async def broken(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("invalid_payload", status_code=400)


@pytest.fixture
def webhook() -> Iterator[tuple[IncomingWebhook, str]]:
    hook = IncomingWebhook()
    with SandboxServer(hook.app) as server:
        yield hook, server.url


def drift_alert() -> Alert:
    return Alert(
        kind="schema_drift",
        severity=Severity.INFO,
        message="stream 'customers' changed its schema compatibly",
        tenant="acme",
        provider="stripe",
        stream="customers",
        details={"to_version": 2},
    )


def test_slack_sink_posts_the_alert_as_text(webhook: tuple[IncomingWebhook, str]) -> None:
    hook, url = webhook
    SlackWebhookAlertSink(f"{url}/services/T000/B000/XXX").send(drift_alert())

    [post] = hook.posts
    assert list(post) == ["text"]
    assert "schema_drift" in post["text"]
    assert "acme/stripe/customers" in post["text"]
    assert "to_version: 2" in post["text"]


def test_slack_sink_logs_a_rejected_post_and_does_not_raise(
    webhook: tuple[IncomingWebhook, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = webhook
    SlackWebhookAlertSink(f"{url}/broken").send(drift_alert())

    [failure] = [r for r in caplog.records if getattr(r, "cdp_event", None) == "alert_delivery_failed"]
    assert failure.cdp["status"] == 400
    assert url not in failure.getMessage()  # The webhook URL is a secret.


def test_slack_sink_logs_an_unreachable_webhook_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    SlackWebhookAlertSink("http://127.0.0.1:9/hook", timeout_seconds=1).send(drift_alert())

    assert [r.cdp["error"] for r in caplog.records if getattr(r, "cdp_event", None) == "alert_delivery_failed"]


def test_slack_sink_is_registered_when_the_environment_names_a_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDP_SLACK_WEBHOOK_URL", raising=False)
    assert [sink.name for sink in cdp_alert_sinks()] == ["log"]
    monkeypatch.setenv("CDP_SLACK_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert [sink.name for sink in cdp_alert_sinks()] == ["log", "slack-webhook"]


def test_target_posts_alerts_to_its_slack_webhook_setting(tmp_path: Path, webhook: tuple[IncomingWebhook, str]) -> None:
    hook, url = webhook
    config = zone_config(str(tmp_path), slack_webhook_url=f"{url}/services/T000/B000/XXX")
    run_target(
        config, [schema_message("customers", CUSTOMERS_SCHEMA), record_message("customers", {"id": "1", "x": 1})]
    )

    [post] = hook.posts
    assert "$.x" in post["text"]
    assert '"x": 1' not in post["text"]  # Alerts never carry record contents.


def test_dlq_volume_over_the_threshold_raises_one_alert_per_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = zone_config(str(tmp_path), dlq_alert_threshold=3)
    caplog.set_level(logging.INFO)
    bad = [record_message("customers", {"id": str(i), "age": "old"}) for i in range(8)]
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), *bad])

    volume = [
        {**r.cdp, **r.cdp["details"]} for r in caplog.records if getattr(r, "cdp_event", None) == "alert.dlq_volume"
    ]
    assert len(volume) == 1
    assert volume[0]["severity"] == "error"
    assert volume[0]["threshold"] == 3
    assert len(dead_letters(config)) == 8


def test_dlq_volume_at_the_threshold_raises_no_alert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = zone_config(str(tmp_path), dlq_alert_threshold=3)
    caplog.set_level(logging.INFO)
    bad = [record_message("customers", {"id": str(i), "age": "old"}) for i in range(3)]
    run_target(config, [schema_message("customers", CUSTOMERS_SCHEMA), *bad])

    assert not [r for r in caplog.records if getattr(r, "cdp_event", None) == "alert.dlq_volume"]
