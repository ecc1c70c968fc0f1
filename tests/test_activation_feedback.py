"""The campaign feedback loop: signed campaign events and SendGrid's Event Webhook through the real receiver,
campaign_metrics in PostgreSQL, and the feedback's suppressions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from activators.campaigns.metrics import (
    MetricsInputError,
    apply_feedback_suppressions,
    campaign_metrics,
    ensure_metrics_view,
)
from plugins.activation import ensure_schema, is_suppressed
from plugins.connectors.sandbox import SandboxServer
from plugins.connectors.webhook_signing import WebhookHandler, WebhookSignatureError
from plugins.manager import sources
from plugins.webhooks.file_log import FileWebhookLog
from plugins.webhooks.receiver import ReceiverSettings, WebhookReceiver, registered_handlers
from taps.campaign_events.webhook import (
    CampaignEventsWebhookHandler,
    SendGridWebhookHandler,
    sendgrid_signature,
)
from taps.webhooks.streams import event_schema
from transforms.events.transform import OUTPUT_COLUMNS as EVENT_COLUMNS

TENANT = "acme"
HMAC_SECRET = "cdp_feedback_secret"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
SECRETS = {
    "CDP_WEBHOOK_SECRET__ACME__CAMPAIGN_EVENTS": HMAC_SECRET,
    "CDP_WEBHOOK_SECRET__ACME__SENDGRID": SENDGRID_PUBLIC,
}


@dataclass
class Receiver:
    url: str
    log: FileWebhookLog

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/{TENANT}/{provider}", content=body, headers=headers, timeout=10)

    def stored(self, provider: str, stream: str) -> list[dict[str, Any]]:
        return [{"id": s.entry.event_id, **s.entry.payload} for s in self.log.read(TENANT, provider, stream)]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)
    handlers: dict[str, WebhookHandler] = {
        "campaign-events": CampaignEventsWebhookHandler(),
        "sendgrid": SendGridWebhookHandler(),
    }
    app = WebhookReceiver(log, handlers, ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=SECRETS))
    with SandboxServer(app.app(), **app.uvicorn_options()) as server:
        yield Receiver(server.url, log)


def campaign_event(event_id: str, kind: str, customer: str, **extra: Any) -> bytes:
    event = {
        "id": event_id,
        "type": kind,
        "occurred_at": "2026-11-30T08:00:00Z",
        "campaign": "spring",
        "variant": "a",
        "customer_id": customer,
        "email": f"{customer}@example.com",
        **extra,
    }
    return json.dumps(event).encode()


def hmac_headers(body: bytes, secret: str = HMAC_SECRET) -> dict[str, str]:
    return {"X-CDP-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def sendgrid_headers(body: bytes, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": sendgrid_signature(key, timestamp, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def test_both_feedback_formats_are_registered_with_the_receiver() -> None:
    assert {"campaign-events", "sendgrid"} <= set(registered_handlers())
    assert sources()["sendgrid"].load_webhook_handler().streams == ("email_events",)


def test_a_signed_campaign_event_is_stored_and_a_bad_signature_refused(receiver: Receiver) -> None:
    body = campaign_event("ev-1", "opened", "c1")
    assert receiver.post("campaign-events", body, hmac_headers(body)).status_code == 200
    assert receiver.post("campaign-events", body, hmac_headers(body, "wrong")).status_code == 401
    assert receiver.post("campaign-events", body, {}).status_code == 401
    stored = receiver.stored("campaign-events", "campaign_events")
    assert [(e["id"], e["type"], e["campaign"], e["variant"]) for e in stored] == [("ev-1", "opened", "spring", "a")]


def test_a_campaign_event_of_an_unknown_type_is_dead_lettered_not_stored(receiver: Receiver) -> None:
    body = campaign_event("ev-2", "liked", "c1")
    assert receiver.post("campaign-events", body, hmac_headers(body)).status_code == 202
    assert receiver.stored("campaign-events", "campaign_events") == []


def test_sendgrid_signature_is_verified_and_each_event_of_the_array_stored(receiver: Receiver) -> None:
    body = json.dumps(
        [
            {
                "email": "c1@example.com",
                "timestamp": 1764489600,
                "event": "delivered",
                "sg_event_id": "sg-1",
                "sg_message_id": "m1",
                "campaign": "spring",
                "variant": "a",
                "customer_id": "c1",
            },
            {
                "email": "c2@example.com",
                "timestamp": 1764489601,
                "event": "bounce",
                "type": "bounce",
                "bounce_classification": "Invalid Address",
                "reason": "550 5.1.1 no such user",
                "sg_event_id": "sg-2",
                "sg_message_id": "m2",
                "campaign": "spring",
                "variant": "b",
                "customer_id": "c2",
            },
        ]
    ).encode()
    assert receiver.post("sendgrid", body, sendgrid_headers(body)).status_code == 200
    assert [e["id"] for e in receiver.stored("sendgrid", "email_events")] == ["sg-1", "sg-2"]
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = body.replace(b"sg-2", b"sg-3")
    assert receiver.post("sendgrid", forged, sendgrid_headers(forged, other_key)).status_code == 401
    tampered = sendgrid_headers(body)
    assert receiver.post("sendgrid", forged, tampered).status_code == 401  # Signed for another body.
    assert [e["id"] for e in receiver.stored("sendgrid", "email_events")] == ["sg-1", "sg-2"]


def test_a_stale_sendgrid_timestamp_is_refused() -> None:
    body = b"[]"
    old = str(int(time.time()) - 3600)
    headers = {
        "x-twilio-email-event-webhook-signature": sendgrid_signature(SENDGRID_KEY, old, body),
        "x-twilio-email-event-webhook-timestamp": old,
    }
    with pytest.raises(WebhookSignatureError) as refused:
        SendGridWebhookHandler().verify(headers, body, [SENDGRID_PUBLIC], time.time())
    assert refused.value.reason == "stale"


def test_drained_feedback_streams_declare_their_payload_fields_to_the_raw_zone() -> None:
    properties = event_schema(CampaignEventsWebhookHandler().stream_properties["campaign_events"])["properties"]
    assert {"type", "campaign", "variant", "customer_id", "email", "revenue", "_webhook_event_id"} <= set(properties)


# --- campaign_metrics and suppressions over the loaded tables -------------------------------------------------


def _load_events(
    conn: psycopg.Connection[Any], tenant: str, rows: list[tuple[str, str, str, str, dict[str, Any]]]
) -> None:
    """The ``events`` rows of campaign feedback as the events transform writes them and the loader loads them."""
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{tenant}".events (event_id text primary key, provider text, channel text, '
        "type text, object_type text, object_id text, customer_id_type text, customer_id_value text, email text, "
        "occurred_at timestamptz, received_at timestamptz, payload text)"
    )
    for event_id, provider, kind, customer, payload in rows:
        conn.execute(
            f"INSERT INTO \"{tenant}\".events VALUES (%s, %s, 'webhook', %s, 'campaign_event', %s, %s, %s, %s, "
            "now(), now(), %s)",
            (
                f"{provider}:{event_id}",
                provider,
                kind,
                payload["campaign"],
                f"{provider}_customer",
                customer,
                f"{customer}@example.com",
                json.dumps(payload),
            ),
        )
    conn.commit()


def _sent(conn: psycopg.Connection[Any], tenant: str, customers: list[str], variant: str) -> None:
    for customer in customers:
        conn.execute(
            f'INSERT INTO "{tenant}".send_log (campaign, customer_id, variant, action, refresh_id, run_id, status, '
            "attempts, updated_at) VALUES ('spring', %s, %s, 'add', 1, 1, 'accepted', 1, now())",
            (customer, variant),
        )
    conn.commit()


def test_campaign_metrics_count_people_per_variant_with_complaints_and_revenue(postgres_url: str) -> None:
    tenant = "feedback_metrics"  # Its own schema: the PostgreSQL server is shared by the session's tests.
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        with pytest.raises(MetricsInputError, match="no events table"):
            ensure_metrics_view(conn, tenant)
        _sent(conn, tenant, ["c1", "c2", "c3", "c4"], "a")
        _sent(conn, tenant, ["c5"], "b")
        spring_a = {"campaign": "spring", "variant": "a"}
        _load_events(
            conn,
            tenant,
            [
                *[(f"d{c}", "campaign-events", "delivered", c, spring_a) for c in ("c1", "c2", "c3", "c4")],
                ("o1", "campaign-events", "opened", "c1", spring_a),
                ("o2", "campaign-events", "opened", "c1", spring_a),  # One person opening twice counts once.
                ("k1", "sendgrid", "clicked", "c1", spring_a),
                ("x1", "sendgrid", "complained", "c2", spring_a),
                ("u1", "campaign-events", "unsubscribed", "c3", spring_a),
                ("b1", "sendgrid", "bounced", "c4", {**spring_a, "bounce_type": "hard"}),
                ("v1", "campaign-events", "converted", "c1", {**spring_a, "revenue": 40.5, "currency": "EUR"}),
                ("v2", "campaign-events", "converted", "c1", {**spring_a, "revenue": 9.5, "currency": "EUR"}),
                ("b2", "sendgrid", "bounced", "c5", {"campaign": "spring", "variant": "b", "bounce_type": "soft"}),
            ],
        )
        ensure_metrics_view(conn, tenant)
        rows = {row["variant"]: row for row in campaign_metrics(conn, tenant, "spring")}
    a = rows["a"]
    assert (a["sent"], a["delivered"], a["opened"], a["clicked"]) == (4, 4, 1, 1)
    assert (a["bounced"], a["unsubscribed"], a["complained"], a["converted"]) == (1, 1, 1, 1)
    assert float(a["revenue"]) == 50.0
    assert float(a["complaint_rate"]) == 0.25  # One complaint over four delivered.
    b = rows["b"]
    assert (b["sent"], b["delivered"], b["bounced"], float(b["complaint_rate"])) == (1, 0, 1, 0.0)


def test_hard_bounces_complaints_and_unsubscribes_suppress_but_a_soft_bounce_does_not(postgres_url: str) -> None:
    tenant = "feedback_suppressions"
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        _load_events(
            conn,
            tenant,
            [
                ("h1", "sendgrid", "bounced", "hb", {"campaign": "spring", "variant": "", "bounce_type": "hard"}),
                ("s1", "sendgrid", "bounced", "sb", {"campaign": "spring", "variant": "", "bounce_type": "soft"}),
                ("x1", "sendgrid", "complained", "cp", {"campaign": "spring", "variant": ""}),
                ("u1", "campaign-events", "unsubscribed", "un", {"campaign": "spring", "variant": ""}),
            ],
        )
        assert apply_feedback_suppressions(conn, tenant) == 3
        assert apply_feedback_suppressions(conn, tenant) == 0  # Idempotent.
        suppressed = {c: is_suppressed(conn, tenant, "email", f"{c}@example.com") for c in ("hb", "sb", "cp", "un")}
        reasons: dict[str, str] = dict(conn.execute(f'SELECT address, reason FROM "{tenant}".suppressions').fetchall())
    assert suppressed == {"hb": True, "sb": False, "cp": True, "un": True}
    assert reasons == {
        "hb@example.com": "hard_bounce",
        "cp@example.com": "complaint",
        "un@example.com": "unsubscribe",
    }


# --- end to end: receiver -> log -> raw zone (the real target) -> events transform -> PostgreSQL -> metrics -------


def _drained_records(receiver: Receiver, provider: str, stream: str) -> list[dict[str, Any]]:
    """The records tap-webhooks emits for the stored events (taps/webhooks/streams.py's get_records)."""
    records = []
    for stored in receiver.log.read(TENANT, provider, stream):
        received = stored.entry.received_at
        records.append(
            {
                **stored.entry.payload,
                "_webhook_event_id": stored.entry.event_id,
                "_webhook_topic": stored.entry.topic,
                "_webhook_received_at": received.isoformat() if hasattr(received, "isoformat") else received,
                "_webhook_log_position": stored.position,
            }
        )
    return records


def test_signed_feedback_of_each_type_lands_in_events_and_is_counted_in_campaign_metrics(
    receiver: Receiver, spark: Any, tmp_path: Path, postgres_url: str
) -> None:
    from tests.test_transforms_builtins import RawZone
    from transforms.events.transform import events

    for number, kind in enumerate(("delivered", "opened", "clicked", "unsubscribed", "converted")):
        extra = {"revenue": 25, "currency": "EUR"} if kind == "converted" else {}
        body = campaign_event(f"ev-{number}", kind, "c1", **extra)
        assert receiver.post("campaign-events", body, hmac_headers(body)).status_code == 200
    sendgrid = [
        {"email": "c2@example.com", "timestamp": 1764489600, "event": "delivered", "sg_event_id": "sg-d",
         "campaign": "spring", "variant": "a", "customer_id": "c2"},
        {"email": "c2@example.com", "timestamp": 1764489700, "event": "spamreport", "sg_event_id": "sg-x",
         "campaign": "spring", "variant": "a", "customer_id": "c2"},
        {"email": "c3@example.com", "timestamp": 1764489800, "event": "bounce", "type": "bounce",
         "bounce_classification": "Invalid Address", "sg_event_id": "sg-b", "campaign": "spring", "variant": "a",
         "customer_id": "c3"},
    ]  # fmt: skip
    body = json.dumps(sendgrid).encode()
    assert receiver.post("sendgrid", body, sendgrid_headers(body)).status_code == 200

    zone = RawZone(spark, tmp_path / "zone")
    for handler, stream in (
        (CampaignEventsWebhookHandler(), "campaign_events"),
        (SendGridWebhookHandler(), "email_events"),
    ):
        schema = event_schema(handler.stream_properties[stream])
        records = _drained_records(receiver, handler.provider, stream)
        zone.land(handler.provider, f"webhook_{stream}", schema, records, key="_webhook_event_id")
    frame = events(
        **{
            "campaign-events_webhook_campaign_events": zone.read("campaign-events", "webhook_campaign_events"),
            "sendgrid_webhook_email_events": zone.read("sendgrid", "webhook_email_events"),
        }
    )
    rows = [row.asDict() for row in frame.collect()]
    by_id = {row["event_id"]: row for row in rows}
    assert by_id["sendgrid:sg-x"]["type"] == "complained"
    assert json.loads(by_id["sendgrid:sg-b"]["payload"])["bounce_type"] == "hard"
    assert by_id["campaign-events:ev-4"]["type"] == "converted"
    assert json.loads(by_id["campaign-events:ev-4"]["payload"])["revenue"] == 25

    tenant = "feedback_end_to_end"
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        _sent(conn, tenant, ["c1", "c2", "c3"], "a")
        _load_events(conn, tenant, [])
        for row in rows:
            conn.execute(
                f'INSERT INTO "{tenant}".events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)',
                tuple(row[column] for column in EVENT_COLUMNS),
            )
        conn.commit()
        assert apply_feedback_suppressions(conn, tenant) == 3  # c1 unsubscribed, c2 complained, c3 hard bounce.
        ensure_metrics_view(conn, tenant)
        (metrics,) = campaign_metrics(conn, tenant, "spring")
    assert (metrics["sent"], metrics["delivered"], metrics["opened"], metrics["clicked"]) == (3, 2, 1, 1)
    assert (metrics["bounced"], metrics["unsubscribed"], metrics["complained"], metrics["converted"]) == (1, 1, 1, 1)
    assert float(metrics["revenue"]) == 25.0
    assert float(metrics["complaint_rate"]) == 0.5


def test_cdp_campaign_metrics_suppresses_and_prints_and_names_a_missing_load(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugins.cli.app import main

    tenant = "feedback_cli"
    common = ["--tenant", tenant, "--postgres-url", postgres_url]
    assert main(["campaign", "metrics", "--json", *common]) != 0
    assert "no events table yet" in capsys.readouterr().err
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        _sent(conn, tenant, ["c1"], "")
        _load_events(conn, tenant, [("x1", "sendgrid", "complained", "c1", {"campaign": "spring", "variant": ""})])
    assert main(["campaign", "metrics", "spring", "--json", *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["suppressed"] == 1
    assert [(m["campaign"], m["sent"], m["complained"]) for m in printed["metrics"]] == [("spring", 1, 1)]
