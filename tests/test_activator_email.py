"""The email destination against a real SMTP relay (the aiosmtpd sandbox that verifies DKIM with dkimpy), and its
one-click unsubscribe through the real webhook receiver and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from activators.email.sandbox import SmtpSandbox, dkim_key_pair, sandbox_server, verify_dkim
from activators.email.sender import SIGNED_HEADERS, EmailSender, message_id
from activators.email.unsubscribe import (
    InvalidUnsubscribeTokenError,
    UnsubscribeClaim,
    is_one_click,
    sign_token,
    verify_token,
)
from plugins.activation import DeliverySettings, deliver, ensure_schema, is_suppressed
from plugins.connectors.sandbox import FaultPlan, FaultPlanError, SandboxOptions, SandboxServer
from plugins.connectors.testing import wait_until
from plugins.core.errors import ConfigError
from plugins.descriptors import Delivery, MemberOutcome, RenderedContent, RetryableSendError, SendError
from plugins.manager import activators
from plugins.webhooks.file_log import FileWebhookLog
from plugins.webhooks.receiver import ReceiverSettings, WebhookReceiver, registered_routes
from tests.test_activation_delivery import make_customers, named_session, wait_for_session_end

ROOT = Path(__file__).resolve().parent.parent
SELECTOR, DOMAIN = "s2026", "shop.example"


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, dict[str, str]]:
    private_pem, record = dkim_key_pair()
    return private_pem, {f"{SELECTOR}._domainkey.{DOMAIN}": record}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CDP_UNSUBSCRIBE_SECRET", "unsub-new,unsub-old")
    return "unsub-new"


def _sandbox(dkim_key: tuple[bytes, dict[str, str]], **kwargs: Any) -> SmtpSandbox:
    faults = kwargs.pop("faults", {})
    credentials = kwargs.pop("credentials", {})
    options = SandboxOptions(faults=FaultPlan.from_mapping(faults), credentials=credentials)
    return SmtpSandbox(options, dns_records=dkim_key[1], **kwargs)


@pytest.fixture
def relay(dkim_key: tuple[bytes, dict[str, str]]) -> Iterator[SmtpSandbox]:
    with _sandbox(dkim_key) as sandbox:
        yield sandbox


def _settings(sandbox: SmtpSandbox | None, dkim_key: tuple[bytes, dict[str, str]], **overrides: Any) -> dict[str, Any]:
    """The sender's settings for ``sandbox`` (or for the host and port in ``overrides``)."""
    settings = {
        "host": sandbox.host if sandbox else None,
        "port": sandbox.port if sandbox else None,
        "starttls": False,
        "from_address": f"news@{DOMAIN}",
        "from_name": "Shop News",
        "postal_address": "1 Market Street, Springfield, IL 62701, USA",
        "unsubscribe_url": "https://hooks.shop.example",
        "unsubscribe_mailto": f"unsubscribe@{DOMAIN}",
        "tenant": "acme",
        "campaign": "spring-sale",
        "dkim_selector": SELECTOR,
        "dkim_domain": DOMAIN,
        "dkim_private_key": dkim_key[0].decode(),
    }
    return {**settings, **overrides}


def _deliveries(count: int, start: int = 0) -> list[Delivery]:
    return [
        Delivery(
            f"cus_{n}",
            {"customer_id": f"cus_{n}", "email": f"person{n}@example.org", "first_name": f"P{n}"},
            f"spring-sale:cus_{n}:A",
            variant="A",
            content=RenderedContent(
                f"Spring sale for P{n}", f"Hello P{n},\nour sale starts today.", f"<p>Hello P{n}</p>"
            ),
        )
        for n in range(start, start + count)
    ]


def _headers(data: bytes) -> Any:
    return message_from_bytes(data, policy=SMTP_POLICY)


# -- the message ------------------------------------------------------------------------------------------------


def test_each_message_is_dkim_signed_over_the_one_click_headers_and_verifies(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    sender = EmailSender(_settings(relay, dkim_key))
    results = sender.add(_deliveries(3))
    assert [r.outcome for r in results] == [MemberOutcome.ACCEPTED] * 3
    messages = relay.wait_for(3)
    assert [m.recipients for m in messages] == [
        ("person0@example.org",),
        ("person1@example.org",),
        ("person2@example.org",),
    ]
    for result, message in zip(results, messages, strict=True):
        assert message.dkim == "pass"
        assert message.list_unsubscribe_signed
        assert set(SIGNED_HEADERS[:7]) <= {
            name.title() if name != "message-id" else "Message-ID" for name in message.signed_headers
        }
        assert result.provider_reference == message.message_id
        assert result.provider_reference == message_id(f"spring-sale:{result.member_id}:A", "acme", DOMAIN)


def test_the_headers_a_bulk_sender_needs_are_there(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    EmailSender(_settings(relay, dkim_key)).add(_deliveries(1))
    message = relay.wait_for(1)[0]
    headers = _headers(message.data)
    assert headers["From"] == f"Shop News <news@{DOMAIN}>"
    assert headers["To"] == "person0@example.org"
    assert headers["Subject"] == "Spring sale for P0"
    assert headers["Date"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_link, mailto = (part.strip(" <>") for part in str(headers["List-Unsubscribe"]).split(","))
    assert https_link.startswith("https://hooks.shop.example/unsubscribe/acme/")
    assert mailto.startswith(f"mailto:unsubscribe@{DOMAIN}?subject=unsubscribe%20")
    claim = verify_token(https_link.rpartition("/")[2], ["unsub-new"])
    assert claim == UnsubscribeClaim("acme", "spring-sale", "cus_0", "email", "person0@example.org")
    assert (headers["X-CDP-Campaign"], headers["X-CDP-Variant"], headers["X-CDP-Customer"]) == (
        "spring-sale",
        "A",
        "cus_0",
    )
    assert json.loads(headers["X-SMTPAPI"]) == {
        "unique_args": {"campaign": "spring-sale", "variant": "A", "customer_id": "cus_0"}
    }
    text = headers.get_body(("plain",)).get_content()
    html = headers.get_body(("html",)).get_content()
    assert "our sale starts today." in text
    assert "1 Market Street, Springfield, IL 62701, USA" in text
    assert f"Unsubscribe: {https_link}" in text
    assert "1 Market Street, Springfield, IL 62701, USA" in html
    assert f'href="{https_link}"' in html


def test_a_tampered_signed_header_fails_dkim_and_the_relay_refuses_it(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    EmailSender(_settings(relay, dkim_key)).add(_deliveries(1))
    original = relay.wait_for(1)[0].data
    assert verify_dkim(original, relay.lookup)[0] == "pass"
    swapped = original.replace(b"https://hooks.shop.example/unsubscribe/", b"https://evil.example/unsubscribe/")
    assert swapped != original
    assert verify_dkim(swapped, relay.lookup)[0] == "fail"
    with smtplib.SMTP(relay.host, relay.port) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(f"news@{DOMAIN}", ["person0@example.org"], swapped)
    assert refused.value.smtp_code == 550
    assert b"5.7.26" in refused.value.smtp_error
    assert len(relay.messages) == 1


def test_message_ids_are_stable_per_delivery_and_differ_between_deliveries() -> None:
    first = message_id("spring-sale:cus_1:A", "acme", DOMAIN)
    assert first == message_id("spring-sale:cus_1:A", "acme", DOMAIN)
    assert first != message_id("spring-sale:cus_1:B", "acme", DOMAIN)
    assert first != message_id("spring-sale:cus_1:A", "beta", DOMAIN)
    assert first.startswith("<")
    assert first.endswith(f"@{DOMAIN}>")


# -- the SMTP session -------------------------------------------------------------------------------------------


def test_one_connection_carries_a_whole_batch(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    sender = EmailSender(_settings(relay, dkim_key))
    sender.add(_deliveries(5))
    sender.add(_deliveries(5, start=5))
    sender.close()
    assert len(relay.wait_for(10)) == 10
    assert relay.connections == 2


def test_starttls_and_auth_are_used_when_the_relay_requires_them(
    dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    credentials = {"username": "relay-user", "password": "relay-pass"}
    with _sandbox(dkim_key, tls=True, credentials=credentials) as sandbox:
        settings = _settings(sandbox, dkim_key, starttls=True, ca_file=sandbox.ca_file, **credentials)
        results = EmailSender(settings).add(_deliveries(2))
        assert [r.outcome for r in results] == [MemberOutcome.ACCEPTED] * 2
        assert [(m.tls, m.authenticated_as) for m in sandbox.wait_for(2)] == [(True, "relay-user")] * 2
        wrong = _settings(
            sandbox, dkim_key, starttls=True, ca_file=sandbox.ca_file, username="relay-user", password="x"
        )
        with pytest.raises(SendError, match="refused the credentials"):
            EmailSender(wrong).add(_deliveries(1))
        without_tls = _settings(sandbox, dkim_key, **credentials)
        with pytest.raises(SendError, match="does not offer"):  # AUTH is offered only once TLS is up
            EmailSender(without_tls).add(_deliveries(1))
        without_anything = _settings(sandbox, dkim_key)
        with pytest.raises(SendError, match="530"):  # the relay wants STARTTLS before MAIL
            EmailSender(without_anything).add(_deliveries(1))
        assert len(sandbox.messages) == 2


@pytest.mark.parametrize(
    ("faults", "reply"),
    [
        ({"rate_limit_every": 3}, "451 4.7.1"),
        ({"server_error_every": 3}, "451 4.3.0"),
        ({"server_error_every": 3, "server_error_status": 421}, "421 4.3.0"),
        ({"outage_after": 2, "outage_requests": 2}, "421 4.3.2"),
    ],
)
def test_a_temporary_failure_is_retryable_and_the_retry_sends_nobody_twice(
    dkim_key: tuple[bytes, dict[str, str]], secret_env: str, faults: dict[str, int], reply: str
) -> None:
    with _sandbox(dkim_key, faults=faults) as sandbox:
        sender = EmailSender(_settings(sandbox, dkim_key))
        batch = _deliveries(4)
        with pytest.raises(RetryableSendError, match=reply):
            sender.add(batch)
        assert len(sandbox.messages) == 2
        results = None
        for _attempt in range(3):  # As the engine does: the same batch again, after a backoff.
            try:
                results = sender.add(batch)
                break
            except RetryableSendError:
                continue
        assert results is not None
        assert [r.outcome for r in results] == [MemberOutcome.ACCEPTED] * 4
        received = sorted(m.recipients[0] for m in sandbox.wait_for(4))
        assert received == sorted(f"person{n}@example.org" for n in range(4))  # each exactly once


def test_a_dropped_connection_is_reopened_and_the_message_sent_once(
    dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    with _sandbox(dkim_key, faults={"session_uses": 2}) as sandbox:
        results = EmailSender(_settings(sandbox, dkim_key)).add(_deliveries(5))
        assert [r.outcome for r in results] == [MemberOutcome.ACCEPTED] * 5
        assert [m.recipients[0] for m in sandbox.wait_for(5)] == [f"person{n}@example.org" for n in range(5)]
        assert sandbox.connections == 3


def test_a_permanent_refusal_rejects_that_member_only(dkim_key: tuple[bytes, dict[str, str]], secret_env: str) -> None:
    with _sandbox(dkim_key, faults={"failing": ["person1@example.org"]}) as sandbox:
        batch = _deliveries(3)
        batch.append(Delivery("cus_x", {"customer_id": "cus_x"}, "spring-sale:cus_x:A", "A", batch[0].content))
        results = EmailSender(_settings(sandbox, dkim_key)).add(batch)
        outcomes = {r.member_id: (r.outcome, r.reason[:9]) for r in results}
        assert outcomes == {
            "cus_0": (MemberOutcome.ACCEPTED, ""),
            "cus_1": (MemberOutcome.REJECTED, "550 5.1.1"),
            "cus_2": (MemberOutcome.ACCEPTED, ""),
            "cus_x": (MemberOutcome.REJECTED, "no email "),
        }
        assert len(sandbox.wait_for(2)) == 2


def test_a_member_whose_message_cannot_be_built_is_rejected_and_the_rest_sent(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    good, *_ = _deliveries(1)
    injected = Delivery(
        "cus_i", {"email": "ian@example.org"}, "spring-sale:cus_i:A", "A", RenderedContent("Hi\r\nBcc: all@x.org", "t")
    )
    not_an_address = Delivery("cus_n", {"email": "nobody"}, "spring-sale:cus_n:A", "A", good.content)
    results = EmailSender(_settings(relay, dkim_key)).add([injected, not_an_address, good])
    assert [(r.outcome, r.reason.split(":")[0]) for r in results] == [
        (MemberOutcome.REJECTED, "the message cannot be built"),
        (MemberOutcome.REJECTED, "the email column is not an address"),
        (MemberOutcome.ACCEPTED, ""),
    ]
    assert [m.recipients for m in relay.wait_for(1)] == [("person0@example.org",)]


def test_a_recipient_deferred_by_the_relay_is_retryable(
    dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    with _sandbox(dkim_key, faults={"throttled": ["person0@example.org"]}) as sandbox:
        with pytest.raises(RetryableSendError, match=r"450 4\.2\.1"):
            EmailSender(_settings(sandbox, dkim_key)).add(_deliveries(2))
        assert sandbox.messages == []


def test_the_send_rate_spaces_the_messages(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    sender = EmailSender(_settings(relay, dkim_key, rate=20))
    started = time.monotonic()
    sender.add(_deliveries(5))
    assert time.monotonic() - started >= 4 / 20  # five messages at 20/s: four intervals at least


def test_an_unreachable_relay_is_retryable(dkim_key: tuple[bytes, dict[str, str]], secret_env: str) -> None:
    with _sandbox(dkim_key) as sandbox:
        settings = _settings(sandbox, dkim_key)
    with pytest.raises(RetryableSendError, match="cannot reach the relay"):
        EmailSender(settings).add(_deliveries(1))


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"dkim_private_key": None}, "dkim_private_key"),
        ({"unsubscribe_url": "http://hooks.shop.example"}, "unsubscribe_url"),
        ({"ssl": True, "starttls": True}, "ssl"),
        ({"campaign": ""}, "campaign"),
        ({"colour": "blue"}, "colour"),
        ({"dkim_private_key": "/nonexistent/key.pem"}, "dkim_private_key"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str, overrides: dict[str, Any], setting: str
) -> None:
    settings = {key: value for key, value in {**_settings(relay, dkim_key), **overrides}.items() if value is not None}
    with pytest.raises(ConfigError, match=setting):
        EmailSender(settings)


def test_without_an_unsubscribe_key_nothing_is_sent(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDP_UNSUBSCRIBE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="CDP_UNSUBSCRIBE_SECRET"):
        EmailSender(_settings(relay, dkim_key))


def test_the_secrets_may_come_from_the_environment(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDP_EMAIL_DKIM_PRIVATE_KEY", dkim_key[0].decode())
    settings = _settings(relay, dkim_key)
    del settings["dkim_private_key"]
    EmailSender(settings).add(_deliveries(1))
    assert relay.wait_for(1)[0].dkim == "pass"


def test_the_dkim_key_may_be_a_file(
    relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]], secret_env: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(dkim_key[0])
    EmailSender(_settings(relay, dkim_key, dkim_private_key=str(key_file))).add(_deliveries(1))
    assert relay.wait_for(1)[0].dkim == "pass"


# -- the sandbox ------------------------------------------------------------------------------------------------


def test_the_sandbox_refuses_faults_it_does_not_inject(dkim_key: tuple[bytes, dict[str, str]]) -> None:
    with pytest.raises(FaultPlanError, match="malformed_every"):
        _sandbox(dkim_key, faults={"malformed_every": 2})


def test_the_served_sandbox_keeps_a_mailbox_a_key_and_its_ca(secret_env: str, tmp_path: Path) -> None:
    """What `cdp sandbox serve email` runs: STARTTLS offered but optional, a DKIM key made for the given domain."""
    options = SandboxOptions(credentials={"dkim_selector": SELECTOR, "dkim_domain": DOMAIN})
    mailbox = tmp_path / "mailbox"
    with sandbox_server(options, "127.0.0.1", 0, mailbox=mailbox) as url:
        host, port = url.removeprefix("smtp://").split(":")
        key = mailbox / "dkim-private.pem"
        base = {"host": host, "port": int(port), "dkim_private_key": str(key)}
        plain = _settings(None, (b"", {}), **base)
        EmailSender(plain).add(_deliveries(1))
        EmailSender({**plain, "starttls": True, "ca_file": str(mailbox / "ca.pem")}).add(_deliveries(1, start=1))
        wait_until(lambda: len((mailbox / "messages.jsonl").read_text().splitlines()) == 2 or None, 10, "2 messages")
    index = [json.loads(line) for line in (mailbox / "messages.jsonl").read_text().splitlines()]
    assert [(entry["dkim"], entry["list_unsubscribe_signed"], entry["tls"]) for entry in index] == [
        ("pass", True, False),
        ("pass", True, True),
    ]
    assert (mailbox / "000002.eml").read_bytes().startswith(b"DKIM-Signature:")


def test_the_email_destination_is_a_plugin() -> None:
    email = activators()["email"]
    assert (email.channel, email.content) == ("email", True)
    assert email.load_sender() is EmailSender
    assert email.load_sandbox().__name__ == "sandbox_server"
    assert email.settings_schema["properties"]["password"]["secret"] is True
    assert email.settings_schema["properties"]["dkim_private_key"]["secret"] is True


# -- unsubscribe tokens -----------------------------------------------------------------------------------------

CLAIM = UnsubscribeClaim("acme", "spring-sale", "cus_1", "email", "ada@example.org")


def test_a_token_verifies_with_any_key_still_in_the_rotation() -> None:
    old = sign_token(CLAIM, ["key-old"])
    assert verify_token(old, ["key-new", "key-old"]) == CLAIM
    assert verify_token(sign_token(CLAIM, ["key-new", "key-old"]), ["key-new"]) == CLAIM
    with pytest.raises(InvalidUnsubscribeTokenError, match="signature"):
        verify_token(old, ["key-new"])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        lambda token: "W1siYmV0YSJd" + token[token.index(".") :],
        lambda token: token.replace(".", ""),
        lambda token: token + "!",
        lambda token: "x" * 5000,
    ],
)
def test_a_forged_or_mangled_token_is_refused(mangle: Any) -> None:
    with pytest.raises(InvalidUnsubscribeTokenError):
        verify_token(mangle(sign_token(CLAIM, ["k"])), ["k"])


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click", True),
        (
            "multipart/form-data; boundary=XYZ",
            b'--XYZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--XYZ--\r\n',
            True,
        ),
        ("application/x-www-form-urlencoded", b"", False),
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=Maybe", False),
    ],
)
def test_the_one_click_body_is_read_in_both_form_encodings(content_type: str, body: bytes, expected: bool) -> None:
    assert is_one_click(content_type, body) is expected


# -- the one-click endpoint on the webhook receiver -------------------------------------------------------------


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def receiver(tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """The real webhook receiver, with the activators' routes as `cdp webhooks serve` builds them."""
    environ = {"CDP_UNSUBSCRIBE_SECRET": "unsub-new,unsub-old", "CDP_POSTGRES_URL": postgres_url}
    settings = ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ=environ)
    log = FileWebhookLog(tmp_path / "log", segment_bytes=256 * 1024)
    app = WebhookReceiver(log, {}, settings, registered_routes(settings))
    with SandboxServer(app.app(), **app.uvicorn_options()) as server:
        yield server.url


def _link(base: str, tenant: str, address: str = "Ada@Example.org", keys: tuple[str, ...] = ("unsub-new",)) -> str:
    token = sign_token(UnsubscribeClaim(tenant, "spring-sale", "cus_1", "email", address), list(keys))
    return f"{base}/unsubscribe/{tenant}/{token}"


def test_a_get_shows_a_button_and_never_unsubscribes(receiver: str, tenant: str, postgres_url: str) -> None:
    answer = httpx.get(_link(receiver, tenant), follow_redirects=False)
    assert answer.status_code == 200
    assert "ada@example.org" in answer.text.lower()
    assert '<form method="post">' in answer.text
    assert 'name="List-Unsubscribe" value="One-Click"' in answer.text
    assert "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        assert not is_suppressed(conn, tenant, "email", "ada@example.org")


def test_a_one_click_post_suppresses_at_once_without_redirect_or_cookie(
    receiver: str, tenant: str, postgres_url: str
) -> None:
    link = _link(receiver, tenant, keys=("unsub-old",))  # signed with the older key, still in the rotation
    answer = httpx.post(link, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert answer.status_code == 200
    assert "location" not in answer.headers
    assert "set-cookie" not in answer.headers
    with psycopg.connect(postgres_url) as conn:
        assert is_suppressed(conn, tenant, "email", "ada@example.org")
        row = conn.execute(f'SELECT reason, customer_id, campaign FROM "{tenant}".suppressions').fetchone()
    assert row == ("unsubscribe", "cus_1", "spring-sale")
    again = httpx.post(link, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200  # a second click is as good as the first


def test_the_next_delivery_skips_who_unsubscribed(
    receiver: str, tenant: str, postgres_url: str, relay: SmtpSandbox, dkim_key: tuple[bytes, dict[str, str]],
    secret_env: str,
) -> None:  # fmt: skip
    link = _link(receiver, tenant, "person1@example.com")
    assert httpx.post(link, content=b"List-Unsubscribe=One-Click").status_code == 200
    email = activators()["email"]
    settings = _settings(relay, dkim_key, tenant=tenant)
    with psycopg.connect(postgres_url) as conn:
        make_customers(conn, tenant, 2)
        sender = EmailSender(settings)
        report = deliver(
            conn, tenant, campaign="spring-sale", destination=email, sender=sender, refresh_id=1, action="add",
            deliveries=_members(2),
        )  # fmt: skip
        sender.close()
    assert (report.accepted, report.skipped_suppressed) == (1, 1)
    assert [m.recipients for m in relay.wait_for(1)] == [("person2@example.com",)]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda link: link[:-3] + "abc",  # the signature
        lambda link: link.replace(  # another address's payload under this signature
            link.rpartition("/")[2].partition(".")[0],
            sign_token(UnsubscribeClaim(link.split("/")[-2], "spring-sale", "cus_2", "email", "eve@x.org"), ["k"])[
                :-44
            ],
        ),
        lambda link: link.rsplit("/", 2)[0] + "/other-tenant/" + link.rsplit("/", 1)[1],  # another tenant's path
    ],
)
def test_a_bad_token_is_refused_and_changes_nothing(receiver: str, tenant: str, postgres_url: str, mangle: Any) -> None:
    link = mangle(_link(receiver, tenant))
    assert httpx.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 403
    assert httpx.get(link).status_code == 403
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        assert not is_suppressed(conn, tenant, "email", "ada@example.org")


def test_a_post_without_the_one_click_body_is_refused(receiver: str, tenant: str, postgres_url: str) -> None:
    assert httpx.post(_link(receiver, tenant), content=b"").status_code == 400
    with psycopg.connect(postgres_url) as conn:
        ensure_schema(conn, tenant)
        assert not is_suppressed(conn, tenant, "email", "ada@example.org")


def test_webhooks_still_take_their_own_path_beside_the_unsubscribe_routes(receiver: str) -> None:
    answer = httpx.post(f"{receiver}/webhooks/acme/stripe", content=b"{}")
    assert answer.status_code == 404
    assert answer.json() == {"error": "no webhook endpoint for this tenant and provider"}  # the receiver's own answer
    assert httpx.get(f"{receiver}/healthz").json()["status"] == "ok"


def test_the_receiver_refuses_to_start_unsubscribes_without_postgres(tmp_path: Path) -> None:
    settings = ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ={"CDP_UNSUBSCRIBE_SECRET": "k"})
    with pytest.raises(ConfigError, match="CDP_POSTGRES_URL"):
        registered_routes(settings)
    assert registered_routes(ReceiverSettings(dlq_url=str(tmp_path / "dlq"), environ={})) == []


# -- through the delivery engine --------------------------------------------------------------------------------


def _members(count: int) -> list[Delivery]:
    """Members c1..cN as tests.test_activation_delivery.make_customers writes them, with content."""
    return [
        Delivery(
            f"c{n}",
            {"customer_id": f"c{n}", "email": f"person{n}@example.com"},
            f"spring-sale:c{n}:A",
            "A",
            RenderedContent("Spring sale", "Hello"),
        )
        for n in range(1, count + 1)
    ]


def test_the_engine_retries_deferred_batches_and_keeps_each_message_id(
    tenant: str, postgres_url: str, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    fast = DeliverySettings(max_batch_size=5, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    with _sandbox(dkim_key, faults={"rate_limit_every": 4}) as sandbox, psycopg.connect(postgres_url) as conn:
        make_customers(conn, tenant, 10)
        sender = EmailSender(_settings(sandbox, dkim_key, tenant=tenant))
        report = deliver(
            conn, tenant, campaign="spring-sale", destination=activators()["email"], sender=sender, refresh_id=1,
            action="add", deliveries=_members(10), settings=fast,
        )  # fmt: skip
        assert report.accepted == 10
        received = [m.recipients[0] for m in sandbox.wait_for(10)]
        assert sorted(received) == sorted(f"person{n}@example.com" for n in range(1, 11))  # each exactly once
        rows = conn.execute(f'SELECT customer_id, status, provider_reference FROM "{tenant}".send_log').fetchall()
        assert {(row[1], row[2]) for row in rows} == {
            ("accepted", message_id(f"spring-sale:{row[0]}:A", tenant, DOMAIN)) for row in rows
        }
        assert {m.message_id for m in sandbox.messages} == {row[2] for row in rows}


KILLED_SEND = """
import json, os, sys
import psycopg
from activators.email.sender import EmailSender
from plugins.activation import DeliverySettings, deliver
from plugins.descriptors import Delivery, RenderedContent
from plugins.manager import activators
postgres_url, tenant = sys.argv[1:3]
members = [
    Delivery(f"c{n}", {"customer_id": f"c{n}", "email": f"person{n}@example.com"}, f"spring-sale:c{n}:A", "A",
             RenderedContent("Spring sale", "Hello"))
    for n in range(1, 11)
]
with psycopg.connect(postgres_url) as conn:
    deliver(conn, tenant, campaign="spring-sale", destination=activators()["email"],
            sender=EmailSender(json.loads(os.environ["EMAIL_SETTINGS"])), refresh_id=1, action="add",
            deliveries=members, settings=DeliverySettings(max_batch_size=4))
"""


def test_an_email_send_killed_half_way_and_run_again_mails_nobody_twice(
    tenant: str, postgres_url: str, dkim_key: tuple[bytes, dict[str, str]], secret_env: str
) -> None:
    with _sandbox(dkim_key) as sandbox, psycopg.connect(postgres_url) as conn:
        make_customers(conn, tenant, 10)
        slow = _settings(sandbox, dkim_key, tenant=tenant, rate=2)  # the second batch of 4 takes 2 s: killed inside it
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_SEND, named_session(postgres_url, f"killed-{tenant}"), tenant],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "EMAIL_SETTINGS": json.dumps(slow)},
        )
        try:
            sandbox.wait_for(5, timeout=60)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
        wait_for_session_end(conn, f"killed-{tenant}")
        statuses = dict(conn.execute(f'SELECT status, count(*) FROM "{tenant}".send_log GROUP BY 1').fetchall())
        assert statuses == {"accepted": 4, "sending": 4}
        before = [m.recipients[0] for m in sandbox.messages]

        sender = EmailSender(_settings(sandbox, dkim_key, tenant=tenant))
        report = deliver(
            conn, tenant, campaign="spring-sale", destination=activators()["email"], sender=sender, refresh_id=1,
            action="add", deliveries=_members(10), settings=DeliverySettings(max_batch_size=4),
        )  # fmt: skip
        assert (report.skipped_already_sent, report.unconfirmed, report.accepted) == (4, 4, 2)
        everything = [m.recipients[0] for m in sandbox.wait_for(len(before) + 2)]
        assert len(everything) == len(set(everything))  # nobody twice
        assert set(everything) >= {f"person{n}@example.com" for n in (1, 2, 3, 4, 9, 10)}
