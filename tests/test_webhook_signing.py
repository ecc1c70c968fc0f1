"""Webhook signature schemes and provider handlers, checked against independent implementations where one exists."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
import stripe

from plugins.connectors.webhook_signing import (
    HmacHeaderScheme,
    JsonHmacWebhookHandler,
    SignatureEncoding,
    UnmappableWebhookError,
    WebhookHandler,
    WebhookSignatureError,
    secret_env_var,
    webhook_secrets,
)
from taps.salesforce.webhook import SalesforceWebhookHandler
from taps.shopify.webhook import ShopifyWebhookHandler
from taps.stripe.webhook import MAX_SIGNATURE_ENTRIES, StripeSignatureScheme, StripeWebhookHandler

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STRIPE_BODY = json.dumps(
    {"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}
).encode()


def _stripe_headers(header: str) -> dict[str, str]:
    return {"stripe-signature": header}


def test_stripe_accepts_a_header_made_by_the_stripe_library() -> None:
    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), "whsec_test")
    StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_test"], time.time())


def test_stripe_headers_we_sign_pass_the_stripe_library_verifier() -> None:
    header = StripeSignatureScheme().sign(STRIPE_BODY, "whsec_test", int(time.time()))
    assert stripe.WebhookSignature.verify_header(STRIPE_BODY, header, "whsec_test", tolerance=300)


def test_stripe_accepts_when_any_of_several_v1_signatures_matches() -> None:
    now = int(time.time())
    good = StripeSignatureScheme().sign(STRIPE_BODY, "whsec_test", now).split("v1=")[1]
    header = f"t={now},v1={'0' * 64},v1={good},v0=deadbeef"
    StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_test"], now)


def test_stripe_accepts_the_old_secret_during_rotation() -> None:
    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), "whsec_old")
    StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_new", "whsec_old"], time.time())


def test_stripe_rejects_a_timestamp_older_than_the_tolerance() -> None:
    signed_at = int(time.time()) - 301
    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), "whsec_test", signed_at)
    with pytest.raises(WebhookSignatureError) as caught:
        StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_test"], time.time())
    assert caught.value.reason == "stale"
    with pytest.raises(stripe.SignatureVerificationError):  # The reference implementation agrees.
        stripe.WebhookSignature.verify_header(STRIPE_BODY, header, "whsec_test", tolerance=300)


def test_stripe_future_timestamp_is_stale_and_said_to_be_in_the_future() -> None:
    now = int(time.time())
    header = StripeSignatureScheme().sign(STRIPE_BODY, "whsec_test", now + 400)
    with pytest.raises(WebhookSignatureError, match="400 s in the future") as caught:
        StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_test"], now)
    assert caught.value.reason == "stale"
    assert "-" not in str(caught.value)


def test_stripe_old_timestamp_is_said_to_be_old() -> None:
    now = int(time.time())
    header = StripeSignatureScheme().sign(STRIPE_BODY, "whsec_test", now - 301)
    with pytest.raises(WebhookSignatureError, match="301 s old"):
        StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY, ["whsec_test"], now)


def test_stripe_header_with_too_many_entries_is_refused_before_any_hmac() -> None:
    now = int(time.time())
    good = StripeSignatureScheme().sign(STRIPE_BODY, "whsec_test", now)
    flood = good + ",v1=" + ",v1=".join(["0" * 64] * MAX_SIGNATURE_ENTRIES)
    with pytest.raises(WebhookSignatureError, match="more than 16 entries") as caught:
        StripeWebhookHandler().verify(_stripe_headers(flood), STRIPE_BODY, ["whsec_test"], now)
    assert caught.value.reason == "malformed"


def test_stripe_rejects_a_tampered_body() -> None:
    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), "whsec_test")
    with pytest.raises(WebhookSignatureError) as caught:
        StripeWebhookHandler().verify(_stripe_headers(header), STRIPE_BODY + b" ", ["whsec_test"], time.time())
    assert caught.value.reason == "mismatch"


def test_stripe_rejects_a_missing_or_malformed_header() -> None:
    handler = StripeWebhookHandler()
    with pytest.raises(WebhookSignatureError, match="no stripe-signature"):
        handler.verify({}, STRIPE_BODY, ["whsec_test"], time.time())
    with pytest.raises(WebhookSignatureError, match="no timestamp"):
        handler.verify(_stripe_headers("v1=abc"), STRIPE_BODY, ["whsec_test"], time.time())


def test_stripe_maps_an_event_to_the_events_stream() -> None:
    [event] = StripeWebhookHandler().map({}, STRIPE_BODY, NOW)
    assert (event.stream, event.event_id, event.topic, event.received_at) == ("events", "evt_1", "invoice.paid", NOW)
    assert event.payload["data"]["object"]["id"] == "in_1"


def test_stripe_body_without_an_event_id_is_unmappable() -> None:
    with pytest.raises(UnmappableWebhookError):
        StripeWebhookHandler().map({}, b'{"object": "event", "type": "x"}', NOW)


def _shopify_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


SHOPIFY_BODY = json.dumps(
    {
        "id": 820982911946154508,
        "email": "jon@example.com",
        "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
    }
).encode()
SHOPIFY_CUSTOMER = json.dumps({"id": 706405506930370084, "admin_graphql_api_id": "gid://shopify/Customer/7"}).encode()
TRIGGERED = 1_767_323_045  # 2026-01-02T03:04:05Z


def _shopify_headers(
    body: bytes, secret: str, topic: str = "orders/create", webhook_id: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
) -> dict[str, str]:
    return {
        "x-shopify-hmac-sha256": _shopify_hmac(body, secret),
        "x-shopify-topic": topic,
        "x-shopify-webhook-id": webhook_id,
        "x-shopify-triggered-at": "2026-01-02T03:04:05.877041743Z",  # As Shopify sends it: nanoseconds.
    }


def test_shopify_accepts_a_base64_hmac_of_the_raw_body() -> None:
    ShopifyWebhookHandler().verify(_shopify_headers(SHOPIFY_BODY, "shpss_1"), SHOPIFY_BODY, ["shpss_1"], TRIGGERED)


def test_shopify_accepts_the_old_secret_during_rotation() -> None:
    headers = _shopify_headers(SHOPIFY_BODY, "shpss_old")
    ShopifyWebhookHandler().verify(headers, SHOPIFY_BODY, ["shpss_new", "shpss_old"], TRIGGERED)


def test_shopify_rejects_a_wrong_secret_and_a_hex_digest() -> None:
    handler = ShopifyWebhookHandler()
    with pytest.raises(WebhookSignatureError):
        handler.verify(_shopify_headers(SHOPIFY_BODY, "other"), SHOPIFY_BODY, ["shpss_1"], 0)
    hex_digest = hmac.new(b"shpss_1", SHOPIFY_BODY, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookSignatureError):
        handler.verify({"x-shopify-hmac-sha256": hex_digest}, SHOPIFY_BODY, ["shpss_1"], 0)


def test_shopify_maps_the_topic_resource_to_the_stream() -> None:
    headers = _shopify_headers(SHOPIFY_CUSTOMER, "s", "customers/update")
    [event] = ShopifyWebhookHandler().map(headers, SHOPIFY_CUSTOMER, NOW)
    assert (event.stream, event.topic) == ("customers", "customers/update")
    assert event.payload_json == SHOPIFY_CUSTOMER


def test_shopify_replay_with_new_ids_has_the_same_dedupe_key() -> None:
    handler = ShopifyWebhookHandler()
    [first] = handler.map(_shopify_headers(SHOPIFY_BODY, "s", webhook_id="wh-1"), SHOPIFY_BODY, NOW)
    [replay] = handler.map(_shopify_headers(SHOPIFY_BODY, "s", webhook_id="wh-forged"), SHOPIFY_BODY, NOW)
    assert first.event_id == replay.event_id


def test_shopify_order_body_under_a_customers_topic_is_unmappable() -> None:
    with pytest.raises(UnmappableWebhookError, match="gid://shopify/Customer/"):
        ShopifyWebhookHandler().map(_shopify_headers(SHOPIFY_BODY, "s", "customers/create"), SHOPIFY_BODY, NOW)


def test_shopify_delivery_triggered_too_long_ago_or_without_a_trigger_time_is_refused() -> None:
    handler = ShopifyWebhookHandler()
    headers = _shopify_headers(SHOPIFY_BODY, "shpss_1")
    with pytest.raises(WebhookSignatureError, match="triggered") as caught:
        handler.verify(headers, SHOPIFY_BODY, ["shpss_1"], TRIGGERED + handler.max_age_seconds + 1)
    assert caught.value.reason == "stale"
    del headers["x-shopify-triggered-at"]
    with pytest.raises(WebhookSignatureError, match="X-Shopify-Triggered-At"):
        handler.verify(headers, SHOPIFY_BODY, ["shpss_1"], TRIGGERED)


def test_shopify_topic_without_a_stream_is_unmappable() -> None:
    with pytest.raises(UnmappableWebhookError, match="app/uninstalled"):
        ShopifyWebhookHandler().map(_shopify_headers(SHOPIFY_BODY, "s", "app/uninstalled"), SHOPIFY_BODY, NOW)


def _change_event(entity: str = "Account") -> bytes:
    header = {"entityName": entity, "changeType": "UPDATE", "transactionKey": "0002-abc", "sequenceNumber": 3}
    return json.dumps(
        {"payload": {"ChangeEventHeader": header, "Name": "Ünïcode GmbH"}, "event": {"replayId": 9}}
    ).encode()


def test_salesforce_accepts_a_hex_hmac_in_its_header_and_maps_the_object() -> None:
    body = _change_event()
    handler = SalesforceWebhookHandler()
    headers = {"x-salesforce-signature": hmac.new(b"sf", body, hashlib.sha256).hexdigest()}
    handler.verify(headers, body, ["sf"], 0)
    [event] = handler.map(headers, body, NOW)
    assert (event.stream, event.event_id, event.topic) == ("Account", "0002-abc:3", "UPDATE")


def test_salesforce_rejects_a_missing_signature() -> None:
    with pytest.raises(WebhookSignatureError) as caught:
        SalesforceWebhookHandler().verify({}, _change_event(), ["sf"], 0)
    assert caught.value.reason == "missing"


def test_generic_scheme_supports_base64_with_a_prefix_and_a_configured_header() -> None:
    scheme = HmacHeaderScheme("X-Hub-Signature-256", encoding=SignatureEncoding.HEX, prefix="sha256=")
    handler = JsonHmacWebhookHandler(provider="custom", stream="app_events", scheme=scheme)
    body = b'{"id": "e-1", "type": "signup"}'
    headers = {"x-hub-signature-256": scheme.sign(body, "k")}
    assert headers["x-hub-signature-256"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    handler.verify(headers, body, ["k"], 0)
    [event] = handler.map(headers, body, NOW)
    assert (event.stream, event.event_id, event.topic) == ("app_events", "e-1", "signup")
    b64 = HmacHeaderScheme("X-Signature", encoding=SignatureEncoding.BASE64)
    b64.verify({"x-signature": b64.sign(body, "k")}, body, ["k"])
    with pytest.raises(WebhookSignatureError):
        b64.verify({"x-signature": "!!not base64!!"}, body, ["k"])


def test_every_provider_handler_follows_the_protocol() -> None:
    for handler in (StripeWebhookHandler(), ShopifyWebhookHandler(), SalesforceWebhookHandler()):
        assert isinstance(handler, WebhookHandler)
        assert handler.streams


def test_secrets_come_from_the_tenant_and_provider_variable_comma_separated() -> None:
    assert secret_env_var("acme-eu", "stripe") == "CDP_WEBHOOK_SECRET__ACME_EU__STRIPE"
    environ = {"CDP_WEBHOOK_SECRET__ACME__STRIPE": " whsec_new , whsec_old ,"}
    assert webhook_secrets("acme", "stripe", environ) == ["whsec_new", "whsec_old"]
    assert webhook_secrets("other", "stripe", environ) == []


@pytest.mark.parametrize("topic", ["orders/delete", "products/delete", "customers/delete"])
def test_shopify_delete_payloads_with_only_an_id_are_events(topic: str) -> None:
    body = b'{"id":450789469}'
    [event] = ShopifyWebhookHandler().map(_shopify_headers(body, "s", topic), body, NOW)
    assert (event.stream, event.topic, event.payload) == (topic.partition("/")[0], topic, {"id": 450789469})


def test_shopify_delete_payload_without_an_integer_id_is_unmappable() -> None:
    body = b'{"id":"not-a-number"}'
    with pytest.raises(UnmappableWebhookError, match="integer 'id'"):
        ShopifyWebhookHandler().map(_shopify_headers(body, "s", "orders/delete"), body, NOW)
