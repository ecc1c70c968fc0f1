"""The webhook receiver over real HTTP: every answer it can give, and what it stores or dead-letters for each."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from plugins.connectors.sandbox import SandboxServer
from plugins.connectors.testing import wait_until
from plugins.connectors.webhook_signing import WebhookHandler
from plugins.core.errors import ConfigError
from plugins.webhooks.file_log import FileWebhookLog
from plugins.webhooks.receiver import (
    UVICORN_OPTIONS,
    ReceiverSettings,
    WebhookReceiver,
    parse_allowlist,
    parse_networks,
    registered_handlers,
)
from taps.salesforce.webhook import SalesforceWebhookHandler
from taps.shopify.webhook import ShopifyWebhookHandler
from taps.stripe.webhook import StripeSignatureScheme, StripeWebhookHandler

SECRETS = {
    "CDP_WEBHOOK_SECRET__ACME__STRIPE": "whsec_new,whsec_old",
    "CDP_WEBHOOK_SECRET__ACME__SHOPIFY": "shpss_1",
    "CDP_WEBHOOK_SECRET__ACME__SALESFORCE": "sf_secret",
    "CDP_WEBHOOK_SECRET__BETA__STRIPE": "whsec_beta",
}
HANDLERS: dict[str, WebhookHandler] = {
    "stripe": StripeWebhookHandler(),
    "shopify": ShopifyWebhookHandler(),
    "salesforce": SalesforceWebhookHandler(),
}


@dataclass
class Receiver:
    url: str
    log: FileWebhookLog
    dlq: Path
    receiver: WebhookReceiver

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(self.url + path, content=body, headers=headers, timeout=10)

    def stored(self, tenant: str, provider: str, stream: str) -> list[str]:
        return [stored.entry.event_id for stored in self.log.read(tenant, provider, stream)]


@contextlib.contextmanager
def _serve(tmp_path: Path, **settings: object) -> Iterator[Receiver]:
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)  # Small preallocated files: tests add up.
    receiver = WebhookReceiver(
        log,
        HANDLERS,
        ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=SECRETS, **settings),  # type: ignore[arg-type]
    )
    with SandboxServer(receiver.app(), **receiver.uvicorn_options()) as server:  # Its lifespan opens/closes the log.
        yield Receiver(server.url, log, tmp_path / "dlq", receiver)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with _serve(tmp_path) as server:
        yield server


def stripe_event(event_id: str, event_type: str = "customer.created") -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "data": {"object": {"id": "cus_1"}}}
    ).encode()


def stripe_headers(body: bytes, secret: str = "whsec_new", at: int | None = None) -> dict[str, str]:
    signed_at = int(time.time()) if at is None else at
    return {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body.decode(), secret, signed_at)}


def test_stripe_event_signed_with_the_current_secret_is_stored(receiver: Receiver) -> None:
    body = stripe_event("evt_1")
    response = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    assert response.status_code == 200
    assert response.json() == {"status": "stored", "stored": 1, "duplicates": 0}
    assert receiver.stored("acme", "stripe", "events") == ["evt_1"]


def test_stripe_event_signed_with_the_rotated_out_secret_is_still_stored(receiver: Receiver) -> None:
    body = stripe_event("evt_old")
    assert receiver.post("/webhooks/acme/stripe", body, stripe_headers(body, "whsec_old")).status_code == 200
    assert receiver.stored("acme", "stripe", "events") == ["evt_old"]


def test_stripe_stale_timestamp_is_401_and_nothing_is_stored(receiver: Receiver) -> None:
    body = stripe_event("evt_stale")
    response = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body, at=int(time.time()) - 301))
    assert response.status_code == 401
    assert receiver.stored("acme", "stripe", "events") == []


def test_wrong_secret_is_401_counted_and_logged_without_the_body(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    body = stripe_event("evt_secret_payload")
    response = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body, "whsec_attacker"))
    assert response.status_code == 401
    assert receiver.stored("acme", "stripe", "events") == []
    metrics = httpx.get(receiver.url + "/metrics").text
    assert 'cdp_webhook_signature_failures_total{provider="stripe",reason="mismatch"} 1.0' in metrics
    assert "webhook_signature_rejected" in caplog.text
    assert "evt_secret_payload" not in caplog.text


def test_another_tenants_secret_does_not_verify(receiver: Receiver) -> None:
    body = stripe_event("evt_cross")
    assert receiver.post("/webhooks/acme/stripe", body, stripe_headers(body, "whsec_beta")).status_code == 401


def test_duplicate_delivery_is_acknowledged_but_stored_once(receiver: Receiver) -> None:
    body = stripe_event("evt_dup")
    first = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    second = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "duplicate"
    assert receiver.stored("acme", "stripe", "events") == ["evt_dup"]


SHOPIFY_ORDER = json.dumps(
    {"id": 450789469, "total_price": "10.00", "admin_graphql_api_id": "gid://shopify/Order/450789469"}
).encode()


def shopify_headers(
    body: bytes, topic: str = "orders/create", webhook_id: str = "wh-1", triggered_at: float | None = None
) -> dict[str, str]:
    triggered = datetime.fromtimestamp(time.time() if triggered_at is None else triggered_at, UTC)
    return {
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac.new(b"shpss_1", body, hashlib.sha256).digest()).decode(),
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Triggered-At": triggered.isoformat().replace("+00:00", "Z"),
    }


def dead_letters(receiver: Receiver, tenant: str, provider: str) -> list[dict[str, Any]]:
    batches = (receiver.dlq / tenant / provider / "webhook_invalid").rglob("*.ndjson.gz")
    return [json.loads(line) for batch in batches for line in zlib.decompress(batch.read_bytes(), 31).splitlines()]


def test_shopify_order_is_stored_in_its_topic_stream_and_redelivery_dropped(receiver: Receiver) -> None:
    headers = shopify_headers(SHOPIFY_ORDER)
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, headers).status_code == 200
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, headers).json()["status"] == "duplicate"
    [stored] = list(receiver.log.read("acme", "shopify", "orders"))
    assert stored.entry.event_id.startswith("sha256:")


def test_shopify_capture_replayed_with_new_ids_or_long_after_is_not_stored_again(receiver: Receiver) -> None:
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, shopify_headers(SHOPIFY_ORDER)).status_code == 200
    replay = shopify_headers(SHOPIFY_ORDER, webhook_id="wh-forged")
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, replay).json()["status"] == "duplicate"
    old = shopify_headers(SHOPIFY_ORDER, webhook_id="wh-old", triggered_at=time.time() - 7 * 3600)
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, old).status_code == 401
    assert len(receiver.stored("acme", "shopify", "orders")) == 1


def test_shopify_capture_replayed_under_other_topics_of_its_resource_is_not_stored_again(receiver: Receiver) -> None:
    # The topic header is not signed: any "orders/..." topic would otherwise make a captured body a new event.
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, shopify_headers(SHOPIFY_ORDER)).status_code == 200
    for index, topic in enumerate(["orders/updated", "orders/paid", "orders/replay-1", "orders/create/../x"]):
        replay = shopify_headers(SHOPIFY_ORDER, topic=topic, webhook_id=f"wh-forged-{index}")
        assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, replay).json()["status"] == "duplicate"
    assert len(receiver.stored("acme", "shopify", "orders")) == 1


def test_shopify_order_body_under_a_customers_topic_goes_to_the_dlq(receiver: Receiver) -> None:
    headers = shopify_headers(SHOPIFY_ORDER, topic="customers/create")
    assert receiver.post("/webhooks/acme/shopify", SHOPIFY_ORDER, headers).status_code == 202
    assert receiver.stored("acme", "shopify", "customers") == []
    [letter] = dead_letters(receiver, "acme", "shopify")
    assert "gid://shopify/Customer/" in letter["error_message"]


def test_shopify_bad_hmac_is_401(receiver: Receiver) -> None:
    body = b'{"id": 1}'
    headers = {"X-Shopify-Hmac-Sha256": "AAAA", "X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "x"}
    assert receiver.post("/webhooks/acme/shopify", body, headers).status_code == 401


def test_salesforce_change_event_is_stored_under_its_object(receiver: Receiver) -> None:
    header = {"entityName": "Contact", "changeType": "CREATE", "transactionKey": "t1", "sequenceNumber": 1}
    body = json.dumps({"payload": {"ChangeEventHeader": header, "LastName": "Ng"}}).encode()
    signature = hmac.new(b"sf_secret", body, hashlib.sha256).hexdigest()
    assert receiver.post("/webhooks/acme/salesforce", body, {"X-Salesforce-Signature": signature}).status_code == 200
    assert receiver.stored("acme", "salesforce", "Contact") == ["t1:1"]


def test_unknown_tenant_and_unknown_provider_are_404(receiver: Receiver) -> None:
    body = stripe_event("evt_x")
    assert receiver.post("/webhooks/nobody/stripe", body, stripe_headers(body)).status_code == 404
    assert receiver.post("/webhooks/acme/paypal", body, stripe_headers(body)).status_code == 404


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    with _serve(tmp_path, max_body_bytes=1000) as server:
        body = stripe_event("evt_big", "x" * 2000)
        assert server.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 413
        chunks = iter([body[:600], body[600:]])  # No Content-Length: the limit holds while streaming too.
        streamed = httpx.post(server.url + "/webhooks/acme/stripe", content=chunks, headers=stripe_headers(body))
        assert streamed.status_code == 413
        assert server.stored("acme", "stripe", "events") == []


def test_tenant_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    with _serve(tmp_path, rate_per_second=0.5, burst=2) as server:
        statuses = []
        for index in range(3):
            body = stripe_event(f"evt_rate_{index}")
            response = server.post("/webhooks/acme/stripe", body, stripe_headers(body))
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        assert int(response.headers["Retry-After"]) >= 1
        other = stripe_event("evt_beta")  # Another tenant has its own bucket.
        assert server.post("/webhooks/beta/stripe", other, stripe_headers(other, "whsec_beta")).status_code == 200


def test_source_outside_the_providers_allowlist_is_403(tmp_path: Path) -> None:
    with _serve(tmp_path, allow=parse_allowlist(["stripe=10.0.0.0/8"])) as server:
        body = stripe_event("evt_ip")
        assert server.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 403
        shopify_body = b"{}"  # Providers without an allowlist are not restricted (401 here: unsigned).
        assert server.post("/webhooks/acme/shopify", shopify_body, {}).status_code == 401


def test_forwarded_for_is_trusted_only_from_a_configured_proxy(tmp_path: Path) -> None:
    allow = parse_allowlist(["stripe=3.18.12.63/32"])
    body = stripe_event("evt_proxy")
    forwarded = {**stripe_headers(body), "X-Forwarded-For": "3.18.12.63"}
    with _serve(tmp_path / "untrusted", allow=allow) as server:
        assert server.post("/webhooks/acme/stripe", body, forwarded).status_code == 403
    with _serve(tmp_path / "trusted", allow=allow, trusted_proxies=parse_networks("p", ["127.0.0.1"])) as server:
        assert server.post("/webhooks/acme/stripe", body, forwarded).status_code == 200
        spoofed = {**stripe_headers(body), "X-Forwarded-For": "3.18.12.63, 8.8.8.8"}
        assert server.post("/webhooks/acme/stripe", body, spoofed).status_code == 403


def test_signed_body_that_is_not_json_is_202_and_dead_lettered_as_webhook_invalid(receiver: Receiver) -> None:
    body = b"<xml>not json</xml>"
    headers = {"Stripe-Signature": StripeSignatureScheme().sign(body, "whsec_new", int(time.time()))}
    response = receiver.post("/webhooks/acme/stripe", body, headers)
    assert response.status_code == 202
    [batch] = list((receiver.dlq / "acme" / "stripe" / "webhook_invalid").rglob("*.ndjson.gz"))
    [letter] = [json.loads(line) for line in zlib.decompress(batch.read_bytes(), 31).splitlines()]
    assert letter["error_type"] == "webhook_invalid"
    assert letter["record"] == "<xml>not json</xml>"
    assert "stripe-signature" not in letter["context"]["headers"]
    assert receiver.stored("acme", "stripe", "events") == []


def test_dead_letters_keep_only_the_providers_allowlisted_headers(receiver: Receiver) -> None:
    body = b"not json"
    headers = {
        "Stripe-Signature": StripeSignatureScheme().sign(body, "whsec_new", int(time.time())),
        "X-Api-Key": "key_live_123",
        "X-Auth": "Bearer abc",
        "X-Session": "s3cr3t",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    assert receiver.post("/webhooks/acme/stripe", body, headers).status_code == 202
    [letter] = dead_letters(receiver, "acme", "stripe")
    assert set(letter["context"]["headers"]) <= {"content-type", "content-length", "user-agent"}
    assert letter["context"]["headers"]["user-agent"].startswith("Stripe/1.0")
    assert not any(secret in json.dumps(letter) for secret in ("key_live_123", "Bearer abc", "s3cr3t"))


def test_signed_body_that_is_not_utf8_is_dead_lettered_with_its_exact_bytes(receiver: Receiver) -> None:
    body = b'{"id": "evt_\xff\xfe"}'
    headers = {"Stripe-Signature": StripeSignatureScheme().sign(body, "whsec_new", int(time.time()))}
    assert receiver.post("/webhooks/acme/stripe", body, headers).status_code == 202
    [letter] = dead_letters(receiver, "acme", "stripe")
    assert base64.b64decode(letter["context"]["body_base64"]) == body
    assert "\ufffd" not in json.dumps(letter, ensure_ascii=False)
    assert "not UTF-8" in letter["error_message"]


def test_integers_beyond_64_bits_are_stored_exactly_as_sent(receiver: Receiver) -> None:
    body = b'{"id": "evt_big", "object": "event", "type": "x.y", "data": {"amount": 123456789012345678901234567890}}'
    assert receiver.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 200
    [stored] = list(receiver.log.read("acme", "stripe", "events"))
    assert stored.entry.payload["data"]["amount"] == 123456789012345678901234567890


def test_decimals_a_float_cannot_hold_are_stored_exactly_as_sent(receiver: Receiver) -> None:
    """The exact parser keeps 0.12345678901234567890123 as a Decimal; it must be stored, not dead-lettered."""
    body = b'{"id": "evt_dec", "object": "event", "type": "x.y", "data": {"rate": 0.12345678901234567890123}}'
    assert receiver.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 200
    [stored] = list(receiver.log.read("acme", "stripe", "events"))
    assert stored.entry.payload["data"]["rate"] == Decimal("0.12345678901234567890123")
    assert not dead_letters(receiver, "acme", "stripe")


def nested_stripe_event(event_id: str, depth: int) -> bytes:
    inner = b'{"x": ' * depth + b"1" + b"}" * depth
    return b'{"id": "' + event_id.encode() + b'", "object": "event", "type": "deep", "data": ' + inner + b"}"


def test_a_body_too_deep_to_store_is_dead_lettered_and_concurrent_events_are_stored(receiver: Receiver) -> None:
    deep = nested_stripe_event("evt_deep", 400)
    bodies = [stripe_event(f"evt_beside_{index}") for index in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        deep_answer = pool.submit(receiver.post, "/webhooks/acme/stripe", deep, stripe_headers(deep))
        answers = list(
            pool.map(lambda body: receiver.post("/webhooks/acme/stripe", body, stripe_headers(body)), bodies)
        )
    assert deep_answer.result().status_code == 202
    assert [answer.status_code for answer in answers] == [200] * 20
    assert sorted(receiver.stored("acme", "stripe", "events")) == sorted(f"evt_beside_{i}" for i in range(20))
    [letter] = dead_letters(receiver, "acme", "stripe")
    assert "253 levels" in letter["error_message"]
    assert letter["record"] == deep.decode()
    again = receiver.post("/webhooks/acme/stripe", deep, stripe_headers(deep))  # The provider's retry: same answer.
    assert again.status_code == 202


def test_unsigned_requests_do_not_spend_the_tenants_rate_and_are_limited_per_address(tmp_path: Path) -> None:
    with _serve(tmp_path, rate_per_second=0.01, burst=2, unverified_rate_per_second=0.01, unverified_burst=3) as server:
        forged = stripe_event("evt_forged")
        statuses = [
            server.post("/webhooks/acme/stripe", forged, stripe_headers(forged, "whsec_attacker")).status_code
            for _ in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]  # The address's own budget of failures, then 429.
        body = stripe_event("evt_same_address")  # That address waits for its bucket to refill, signed or not.
        assert server.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 429
    with _serve(tmp_path / "second", rate_per_second=0.01, burst=2, unverified_burst=3) as server:
        # Failures below the address's limit: the tenant's whole burst is still there for verified deliveries.
        for _ in range(2):
            forged = stripe_event("evt_forged")
            assert server.post("/webhooks/acme/stripe", forged, stripe_headers(forged, "bad")).status_code == 401
        for index in range(2):
            body = stripe_event(f"evt_real_{index}")
            assert server.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 200


def test_tenant_names_that_share_a_secret_variable_are_served_under_one_name_only(tmp_path: Path) -> None:
    environ = {**SECRETS, "CDP_WEBHOOK_SECRET__ACME_X__STRIPE": "whsec_x"}
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)
    receiver = WebhookReceiver(log, HANDLERS, ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=environ))
    with SandboxServer(receiver.app(), **UVICORN_OPTIONS) as server:
        body = stripe_event("evt_x")
        headers = stripe_headers(body, "whsec_x")
        assert httpx.post(f"{server.url}/webhooks/acme-x/stripe", content=body, headers=headers).status_code == 200
        assert httpx.post(f"{server.url}/webhooks/acme_x/stripe", content=body, headers=headers).status_code == 404
    assert [s.entry.event_id for s in log.read("acme-x", "stripe", "events")] == ["evt_x"]
    assert list(log.read("acme_x", "stripe", "events")) == []
    with pytest.raises(ConfigError, match="acme-x / acme_x would share one secret variable"):
        ReceiverSettings(tenants=["acme", "acme-x", "acme_x"])


def test_a_served_tenant_name_with_a_trailing_newline_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match="must be lower-case letters"):
        ReceiverSettings(tenants=["acme\n"])


def test_a_body_that_does_not_arrive_in_time_is_408(tmp_path: Path) -> None:
    with _serve(tmp_path, body_timeout_seconds=0.3) as server:
        body = stripe_event("evt_slow")
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = "\r\n".join(
                [
                    "POST /webhooks/acme/stripe HTTP/1.1",
                    f"Host: {host}",
                    f"Content-Length: {len(body)}",
                    f"Stripe-Signature: {stripe_headers(body)['Stripe-Signature']}",
                    "",
                    "",
                ]
            )
            sock.sendall(head.encode() + body[:10])  # The rest never comes.
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")


def test_healthz_and_metrics_report_requests_bytes_latency_and_queue_depth(receiver: Receiver) -> None:
    body = stripe_event("evt_m")
    receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    assert httpx.get(receiver.url + "/healthz").json() == {"status": "ok", "queue_depth": 0}
    metrics = httpx.get(receiver.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'cdp_webhook_requests_total{provider="stripe",status="200"} 1.0' in text
    assert f'cdp_webhook_request_bytes_total{{provider="stripe"}} {float(len(body))}' in text
    assert 'cdp_webhook_request_duration_seconds_count{provider="stripe"} 1.0' in text
    assert "cdp_webhook_log_queue_depth 0.0" in text


def test_metrics_report_the_logs_sync_waits_and_garbage_collection_pauses(receiver: Receiver) -> None:
    body = stripe_event("evt_sync_timed")
    receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    receiver.receiver.metrics.observe_gc_pause(2, 0.003)  # As the gc callback records a full collection.
    text = httpx.get(receiver.url + "/metrics").text
    assert 'cdp_webhook_log_seconds_count{kind="sync"} 1.0' in text
    assert 'cdp_webhook_log_seconds_count{kind="roll"} 0.0' in text
    # The callback times every collection of this process (the test's too), so at least the one recorded here.
    full_count = 'cdp_webhook_gc_pause_seconds_count{generation="2"}'
    [full] = [line for line in text.splitlines() if line.startswith(full_count)]
    assert float(full.rpartition(" ")[2]) >= 1


def test_the_receiver_compacts_its_log_on_a_schedule(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path / "log", segment_bytes=100)  # Tiny segments: one event each.
    settings = ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=SECRETS, compact_interval_seconds=0.05)
    receiver = WebhookReceiver(log, HANDLERS, settings)
    with SandboxServer(receiver.app(), **UVICORN_OPTIONS) as server:
        for index in range(4):
            body = stripe_event(f"evt_c{index}")
            assert httpx.post(
                f"{server.url}/webhooks/acme/stripe", content=body, headers=stripe_headers(body)
            ).is_success
        stored = list(log.read("acme", "stripe", "events"))
        log.commit("acme/stripe/events", stored[-1].position)  # What a drained and confirmed run records.
        segments = tmp_path / "log" / "segments"
        wait_until(lambda: len(list(segments.glob("*.seg"))) == 1, 5, "the scheduled compaction")
    assert len(list((tmp_path / "log" / "segments").glob("*.seg"))) == 1  # Only the segment being appended to.
    assert list(log.read("acme", "stripe", "events")) == []


def test_the_receiver_takes_its_handlers_from_the_source_plugins() -> None:
    handlers = registered_handlers()
    assert isinstance(handlers["stripe"], StripeWebhookHandler)
    assert isinstance(handlers["shopify"], ShopifyWebhookHandler)
    assert isinstance(handlers["salesforce"], SalesforceWebhookHandler)


def test_a_failed_log_answers_503_and_healthz_reports_it(receiver: Receiver) -> None:
    body = stripe_event("evt_before")
    assert receiver.post("/webhooks/acme/stripe", body, stripe_headers(body)).status_code == 200
    receiver.log._loop_writer._helper.kill()  # type: ignore[union-attr]  # As if the disk stopped syncing.

    def noticed() -> bool:  # At its next sync at the latest.
        if receiver.log.failed is not None:
            return True
        body = stripe_event(f"evt_probe_{time.monotonic_ns()}")
        receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
        return False

    wait_until(noticed, 5, "the log to notice its fsync helper is gone")
    body = stripe_event("evt_after")
    response = receiver.post("/webhooks/acme/stripe", body, stripe_headers(body))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    health = httpx.get(receiver.url + "/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "failing"


def test_only_post_is_accepted_on_the_webhook_path(receiver: Receiver) -> None:
    response = httpx.get(receiver.url + "/webhooks/acme/stripe")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_paths_beside_the_webhook_pattern_are_not_served_as_webhooks(receiver: Receiver) -> None:
    body = stripe_event("evt_beside")
    for path in ["/webhooks/acme/stripe/extra", "/webhooks/acme", "/webhooks//stripe", "/hooks/acme/stripe"]:
        assert receiver.post(path, body, stripe_headers(body)).status_code == 404, path
    assert receiver.stored("acme", "stripe", "events") == []


@dataclass(frozen=True)
class _FailingStripeHandler(StripeWebhookHandler):
    def map(self, headers: Any, body: bytes, received_at: datetime) -> Any:
        raise RuntimeError("a handler bug")


def test_an_unexpected_error_in_a_handler_answers_500_and_the_receiver_goes_on_serving(tmp_path: Path) -> None:
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)
    settings = ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=SECRETS)
    receiver = WebhookReceiver(log, {"stripe": _FailingStripeHandler(), "shopify": ShopifyWebhookHandler()}, settings)
    with SandboxServer(receiver.app(), **receiver.uvicorn_options()) as server:
        body = stripe_event("evt_bug")
        failed = httpx.post(f"{server.url}/webhooks/acme/stripe", content=body, headers=stripe_headers(body))
        assert failed.status_code == 500
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        headers = shopify_headers(SHOPIFY_ORDER)
        shopify = httpx.post(f"{server.url}/webhooks/acme/shopify", content=SHOPIFY_ORDER, headers=headers)
        assert shopify.status_code == 200
    assert list(log.read("acme", "stripe", "events")) == []


def test_a_later_request_whose_headers_stall_on_a_kept_alive_connection_is_408(tmp_path: Path) -> None:
    with _serve(tmp_path, header_timeout_seconds=0.5) as server:
        sock = _connect(server.url)
        body = stripe_event("evt_kept_alive")
        signature = stripe_headers(body)["Stripe-Signature"]
        head = f"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(f"{head}Stripe-Signature: {signature}\r\n\r\n".encode() + body)
        first = b""
        while b'"stored"' not in first:
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\n")  # ... and never the rest.
        assert _answer(sock).startswith(b"HTTP/1.1 408")  # Not the keep-alive close (5 s), which answers nothing.
        sock.close()
    assert server.stored("acme", "stripe", "events") == ["evt_kept_alive"]


def test_latency_histogram_counts_a_value_in_every_bucket_at_or_above_it(tmp_path: Path) -> None:
    metrics = WebhookReceiver(
        FileWebhookLog(tmp_path / "log"), HANDLERS, ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=SECRETS)
    ).metrics
    for seconds in (0.001, 0.0011, 3.0):  # On a bound, just above it, and above every bound.
        metrics.observe_latency("stripe", seconds)
    text = metrics.exposition().decode()
    bucket = 'cdp_webhook_request_duration_seconds_bucket{{le="{}",provider="stripe"}} {}'
    assert bucket.format("0.0005", "0.0") in text
    assert bucket.format("0.001", "1.0") in text  # A bucket counts values <= its bound.
    assert bucket.format("0.0025", "2.0") in text
    assert bucket.format("2.5", "2.0") in text
    assert bucket.format("+Inf", "3.0") in text
    assert 'cdp_webhook_request_duration_seconds_sum{provider="stripe"} 3.0021' in text


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_the_receiver_answers_signed_events_promptly_while_slow_and_oversized_clients_are_connected(
    tmp_path: Path,
) -> None:
    with _serve(tmp_path, header_timeout_seconds=1.0, body_timeout_seconds=1.0, max_header_bytes=8192) as server:
        slow_headers = [_connect(server.url) for _ in range(10)]
        for sock in slow_headers:
            sock.sendall(b"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # ... and never the rest.
        slow_bodies = [_connect(server.url) for _ in range(10)]
        for sock in slow_bodies:
            body = stripe_event("evt_slow_body")
            head = f"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            sock.sendall((head + f"Stripe-Signature: {stripe_headers(body)['Stripe-Signature']}\r\n\r\n").encode())
            sock.sendall(body[:5])
        oversized = _connect(server.url)
        oversized.sendall(b"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):  # The server may close the connection while this is still sending.
            for index in range(1000):  # Up to 8 MB of headers, refused after the first 8 KiB.
                oversized.sendall(f"X-Filler-{index}: {'a' * 8000}\r\n".encode())
        flood = StripeSignatureScheme().sign(b"{}", "whsec_new", int(time.time()))
        huge_signature = flood + ",v1=" + ",v1=".join(["0" * 64] * 100)  # Within the header limit, over the entries.

        latencies = []
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for index in range(30):
                body = stripe_event(f"evt_prompt_{index}")
                started = time.perf_counter()
                assert (
                    client.post("/webhooks/acme/stripe", content=body, headers=stripe_headers(body)).status_code == 200
                )
                latencies.append(time.perf_counter() - started)
            flooded = client.post("/webhooks/acme/stripe", content=b"{}", headers={"Stripe-Signature": huge_signature})
            assert flooded.status_code == 401  # Refused on the entry count, before any HMAC.
        assert sorted(latencies)[len(latencies) // 2] < 0.2  # Median: served at once, not behind the slow clients.

        assert _answer(oversized).startswith(b"HTTP/1.1 431")
        for sock in slow_headers:
            assert _answer(sock).startswith(b"HTTP/1.1 408")
        for sock in slow_bodies:
            assert _answer(sock).startswith(b"HTTP/1.1 408")
        for sock in [*slow_headers, *slow_bodies, oversized]:
            sock.close()
        assert len(server.stored("acme", "stripe", "events")) == 30


def test_one_endless_header_line_is_431_at_the_limit_not_held_until_the_header_timeout(tmp_path: Path) -> None:
    # httptools keeps an unfinished header whole before it reports it: one line that never ends must still be cut off
    # at the limit, not buffered (and re-concatenated) for as long as the header timeout allows.
    with _serve(tmp_path, header_timeout_seconds=60.0, max_header_bytes=8192) as server:
        endless = _connect(server.url)
        endless.sendall(b"POST /webhooks/acme/stripe HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(OSError):  # The server closes the connection while this is still sending.
            for _ in range(64):  # Up to 4 MiB of one header value, no CRLF.
                endless.sendall(b"a" * 65536)
        started = time.monotonic()
        assert _answer(endless).startswith(b"HTTP/1.1 431")
        assert time.monotonic() - started < 10  # Answered at the limit, not at the 60 s header timeout.
        endless.close()


def test_connections_over_the_limit_are_answered_503_and_closed(tmp_path: Path) -> None:
    with _serve(tmp_path, max_connections=4, header_timeout_seconds=30.0) as server:
        idle = [_connect(server.url) for _ in range(4)]
        over = _connect(server.url)
        assert _answer(over).startswith(b"HTTP/1.1 503")
        over.close()
        idle.pop().close()

        def accepted() -> bool:  # The server notices the closed connection on its next loop iteration.
            body = stripe_event("evt_after_idle")
            with contextlib.suppress(httpx.TransportError):
                url = server.url + "/webhooks/acme/stripe"
                return httpx.post(url, content=body, headers=stripe_headers(body)).status_code == 200
            return False

        wait_until(accepted, 5, "a freed connection slot to be reused")
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_cdp_webhooks_serve_refuses_a_port_out_of_range_instead_of_listening_elsewhere(
    tmp_path: Path, port: str
) -> None:
    # 99999 used to reach getaddrinfo, which wrapped it to 34463: the receiver listened on a port nobody asked for.
    # A subprocess with a deadline, so a receiver that does start fails the test instead of serving forever.
    command = [sys.executable, "-m", "plugins.cli.app", "webhooks", "serve", "--port", port]
    result = subprocess.run([*command, "--log-url", str(tmp_path / "log")], capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "Invalid value for '--port'" in result.stderr
    assert not (tmp_path / "log").exists()


def test_cdp_webhooks_serve_on_a_busy_port_fails_in_one_line_before_making_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugins.cli.app import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["webhooks", "serve", "--port", str(port), "--log-url", str(tmp_path / "log")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "log").exists()


def test_cdp_webhooks_serve_on_a_locked_log_or_a_file_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugins.cli.app import main

    running = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)
    running.start_writer()
    try:
        assert main(["webhooks", "serve", "--port", "0", "--log-url", str(tmp_path / "log")]) == 1
    finally:
        running.close()
    err = capsys.readouterr().err.strip()
    assert "another receiver is writing to" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "file").write_text("not a folder")
    assert main(["webhooks", "serve", "--port", "0", "--log-url", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err.strip()
    assert "is a file" in err
    assert len(err.splitlines()) == 1


def test_an_event_one_level_deeper_than_a_record_may_be_goes_to_the_dlq_and_one_at_the_limit_is_stored(
    receiver: Receiver,
) -> None:
    at_limit = nested_stripe_event("evt_253", 252)  # the event object plus 252 levels: 253, what a record may hold
    too_deep = nested_stripe_event("evt_254", 253)
    assert receiver.post("/webhooks/acme/stripe", at_limit, stripe_headers(at_limit)).status_code == 200
    assert receiver.post("/webhooks/acme/stripe", too_deep, stripe_headers(too_deep)).status_code == 202
    assert receiver.stored("acme", "stripe", "events") == ["evt_253"]
