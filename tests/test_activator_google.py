"""The Google audiences destination (activators/google): identifiers hashed exactly as Google's own
google-ads-datamanager-util does, the official client against the Data Manager API sandbox, and the delivery engine
(plugins.activation.deliver) on real PostgreSQL sending through both: batching at 10,000, removals, consent, errors
and retries counted at the sandbox."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from google.ads.datamanager_util.format import Encoding, Formatter
from starlette.applications import Starlette

from activators import google as google_destination
from activators.google.normalize import hash_email, hash_phone, hashed_address, user_identifiers
from activators.google.sandbox import DEFAULT_TOKEN, create_sandbox
from activators.google.sender import GoogleAudienceSender, GoogleSettingsError, consent_status
from plugins.activation import DeliveryReport, DeliverySettings, deliver, ensure_schema
from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.descriptors import ActivatorDescriptor, Delivery, MemberOutcome, RetryableSendError, SendError
from plugins.manager import activators
from tests.test_plugins import _manager_with

GOOGLE = Formatter()
CAMPAIGN = "winback"
FAST = DeliverySettings(backoff_base_seconds=0.01, backoff_max_seconds=0.05, requests_per_second=1000)
AUDIENCE = ("GOOGLE_ADS", "1234567890", "9876")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- identifiers: ours == Google's util == the documented normal form --------------------------------------------

EMAILS = [
    # (input, the normal form Google's formatting guide gives)
    ("cloudy.sanfrancisco+shopping@gmail.com", "cloudysanfrancisco@gmail.com"),
    ("  Cloudy.SanFrancisco@GoogleMail.com ", "cloudysanfrancisco@googlemail.com"),
    ("user.name+NYC@Example.com", "user.name+nyc@example.com"),
    ("\tJane.Doe@EXAMPLE.co.uk\n", "jane.doe@example.co.uk"),
    ("j.o.h.n@gmail.com", "john@gmail.com"),
]
PHONES = [
    # (input as written, the member's country, E.164)
    ("+1 (800) 555-0100", None, "+18005550100"),
    ("+44 20 7946 0958", "GB", "+442079460958"),
    ("+33 6 12 34 56 78", "DE", "+33612345678"),  # the + country code wins over the member's country
    ("0033 6 12 34 56 78", None, "+33612345678"),
]


@pytest.mark.parametrize(("raw", "normal"), EMAILS)
def test_email_hashes_equal_google_util_and_the_documented_normal_form(raw: str, normal: str) -> None:
    assert hash_email(raw) == GOOGLE.process_email_address(raw, Encoding.HEX) == sha(normal)


@pytest.mark.parametrize(("raw", "country", "e164"), PHONES)
def test_phone_hashes_equal_google_util_and_e164(raw: str, country: str | None, e164: str) -> None:
    assert hash_phone(raw, country) == GOOGLE.process_phone_number(e164, Encoding.HEX) == sha(e164)
    if raw.startswith("+"):
        assert hash_phone(raw, country) == GOOGLE.process_phone_number(raw, Encoding.HEX)


def test_a_national_phone_takes_the_members_country_where_google_util_would_hash_a_wrong_number() -> None:
    # Google's formatter keeps the digits only: "+02079460958" matches nobody. The member's country makes it E.164.
    assert hash_phone("020 7946 0958", "GB") == sha("+442079460958")
    assert GOOGLE.process_phone_number("020 7946 0958", Encoding.HEX) == sha("+02079460958")
    with pytest.raises(ValueError, match="without a country code"):
        hash_phone("020 7946 0958", None)


def test_address_parts_equal_google_util() -> None:
    address = hashed_address("  Ann-Marie ", "O'Brien", " ie ", " D02 X285 ")
    assert address.given_name == GOOGLE.process_given_name("  Ann-Marie ", Encoding.HEX) == sha("ann-marie")
    assert address.family_name == GOOGLE.process_family_name("O'Brien", Encoding.HEX) == sha("o'brien")
    assert (address.region_code, address.postal_code) == ("IE", "D02 X285")


@pytest.mark.parametrize("bad", ["no-at-sign", "two@@example.com", "a b@example.com", "   ", "+shop@gmail.com"])
def test_an_email_google_util_refuses_is_left_out_with_the_reason_not_the_value(bad: str) -> None:
    with pytest.raises(ValueError):
        GOOGLE.process_email_address(bad, Encoding.HEX)
    identifiers = user_identifiers({"email": bad, "phone": "+18005550100"})
    assert identifiers.emails == ()
    assert identifiers.phones == (sha("+18005550100"),)
    assert len(identifiers.skipped) == (0 if not bad.strip() else 1)
    assert all(bad.strip() not in reason for reason in identifiers.skipped if bad.strip())


def test_a_row_gives_every_identifier_once_and_the_address_only_when_complete() -> None:
    row = {
        "email": "Ann@Example.com",
        "emails": ["ann@example.com", "a.nn@gmail.com"],
        "phone": "06 12 34 56 78",
        "first_name": "Ann",
        "last_name": "Lee",
        "country": "FR",
        "postal_code": "75001",
    }
    identifiers = user_identifiers(row)
    assert identifiers.emails == (sha("ann@example.com"), sha("ann@gmail.com"))
    assert identifiers.phones == (sha("+33612345678"),)
    assert identifiers.address is not None
    assert identifiers.address.region_code == "FR"
    assert len(identifiers) == 4
    assert user_identifiers({**row, "postal_code": None}).address is None  # left rows carry no postal code


# -- the sender and the sandbox ------------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Any]:
    """``served(faults=..., retry_delay_seconds=...)`` -> (server, app): the sandbox on loopback."""
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


def settings_for(server: SandboxServer, **overrides: Any) -> dict[str, Any]:
    settings = {
        "api_endpoint": server.url,
        "access_token": DEFAULT_TOKEN,
        "operating_account_id": "123-456-7890",
        "login_account_id": "1112223333",
        "audience_id": AUDIENCE[2],
        "terms_of_service_accepted": True,
    }
    return settings | overrides


def delivery(i: int, **columns: Any) -> Delivery:
    customer_id = f"c{i}"
    row = {"customer_id": customer_id, "email": f"Person.{i}@Example.com ", "consent_ads": "granted"} | columns
    return Delivery(customer_id, row, f"{CAMPAIGN}:{customer_id}:")


def test_consent_ads_maps_to_googles_consent_status() -> None:
    assert consent_status("granted").name == "CONSENT_GRANTED"
    assert consent_status(None).name == consent_status("").name == "CONSENT_STATUS_UNSPECIFIED"
    assert consent_status("pending").name == "CONSENT_STATUS_UNSPECIFIED"


def test_the_official_client_sends_consent_destination_and_hashes_the_sandbox_accepts(served: Any) -> None:
    server, app = served()
    sender = GoogleAudienceSender(settings_for(server))
    try:
        results = sender.add(
            [delivery(1), delivery(2, consent_ads=None), delivery(3, email=None), delivery(4, consent_ads="denied")]
        )
    finally:
        sender.close()
    outcomes = {r.member_id: (r.outcome, r.reason) for r in results}
    assert outcomes["c1"][0] is outcomes["c2"][0] is MemberOutcome.ACCEPTED
    assert outcomes["c3"] == (MemberOutcome.REJECTED, "no identifier: no email, phone or full address")
    assert outcomes["c4"] == (MemberOutcome.REJECTED, "ads consent denied")
    (request,) = app.state.requests
    assert (request["status"], request["members"]) == (200, 2)
    granted = {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
    unknown = {"adUserData": "CONSENT_STATUS_UNSPECIFIED", "adPersonalization": "CONSENT_STATUS_UNSPECIFIED"}
    assert request["consents"] == [granted, unknown]
    assert app.state.audiences[AUDIENCE] == {
        frozenset({f"emailAddress:{sha(f'person.{i}@example.com')}"}) for i in (1, 2)
    }
    assert results[0].provider_reference  # the API's requestId


def test_validate_only_checks_the_request_and_changes_nothing(served: Any) -> None:
    server, app = served()
    sender = GoogleAudienceSender(settings_for(server, validate_only=True))
    try:
        assert [r.outcome for r in sender.add([delivery(1)])] == [MemberOutcome.ACCEPTED]
    finally:
        sender.close()
    assert app.state.requests[0]["status"] == 200
    assert app.state.audiences == {}


def test_settings_errors_are_one_line_and_name_the_setting() -> None:
    with pytest.raises(GoogleSettingsError, match="setting 'audience_id' is missing"):
        GoogleAudienceSender({"operating_account_id": "1", "access_token": "t"})
    with pytest.raises(GoogleSettingsError, match="'operating_account_type' 'FACEBOOK' is not one of GOOGLE_ADS"):
        GoogleAudienceSender(
            {"operating_account_id": "1", "operating_account_type": "facebook", "audience_id": "2", "access_token": "t"}
        )


def test_throttling_and_outages_are_retryable_with_googles_delay(served: Any) -> None:
    server, _ = served(FaultPlan(rate_limit_every=1), retry_delay_seconds=7)
    sender = GoogleAudienceSender(settings_for(server))
    with pytest.raises(RetryableSendError, match="429 RESOURCE_EXHAUSTED: Quota exceeded") as throttled:
        sender.add([delivery(1)])
    assert throttled.value.retry_after == 7.0  # from RetryInfo.retryDelay "7s"
    sender.close()
    server, _ = served(FaultPlan(outage_after=0, outage_requests=5), retry_delay_seconds=3)
    sender = GoogleAudienceSender(settings_for(server))
    with pytest.raises(RetryableSendError, match="503 UNAVAILABLE") as unavailable:
        sender.add([delivery(1)])
    assert unavailable.value.retry_after == 3.0  # from Retry-After
    sender.close()


def test_a_dropped_connection_or_a_cut_off_answer_is_retryable(served: Any) -> None:
    server, app = served(FaultPlan(malformed_every=1))
    sender = GoogleAudienceSender(settings_for(server))
    with pytest.raises(RetryableSendError, match="answered with a body that is not its JSON"):
        sender.add([delivery(1)])
    sender.close()
    assert app.state.requests[0]["status"] == 200
    server.stop()  # nothing listens there any more
    sender = GoogleAudienceSender(settings_for(server))
    with pytest.raises(RetryableSendError, match="unreachable: ConnectionError"):
        sender.add([delivery(1)])
    sender.close()


def test_bad_credentials_are_a_send_error_that_never_shows_the_token(served: Any) -> None:
    server, app = served()
    sender = GoogleAudienceSender(settings_for(server, access_token="ya29.not-the-token"))
    with pytest.raises(SendError) as refused:
        sender.add([delivery(1)])
    sender.close()
    assert not isinstance(refused.value, RetryableSendError)
    assert "refused the credentials" in str(refused.value)
    assert "ya29" not in str(refused.value)
    assert app.state.requests[0]["status"] == 401


def test_the_sandbox_refuses_what_google_refuses_with_field_violations(served: Any) -> None:
    server, _ = served()
    client = httpx.Client(base_url=server.url)
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    good_destination = {
        "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1"},
        "productDestinationId": "9",
    }
    member = {"userData": {"userIdentifiers": [{"emailAddress": sha("a@example.com")}]}}
    bodies: dict[str, dict[str, Any]] = {
        "audience_members[0].user_data.user_identifiers[0].email_address": {
            "destinations": [good_destination],
            "encoding": "HEX",
            "audienceMembers": [{"userData": {"userIdentifiers": [{"emailAddress": "a@example.com"}]}}],
        },
        "audience_members": {
            "destinations": [good_destination],
            "encoding": "HEX",
            "audienceMembers": [member] * 10_001,
        },
        "destinations[0].product_destination_id": {
            "destinations": [{"operatingAccount": good_destination["operatingAccount"]}],
            "encoding": "HEX",
            "audienceMembers": [member],
        },
        "encoding": {"destinations": [good_destination], "audienceMembers": [member]},
        "audience_members[0].consent.ad_user_data": {
            "destinations": [good_destination],
            "encoding": "HEX",
            "audienceMembers": [member | {"consent": {"adUserData": "YES"}}],
        },
    }
    for field, body in bodies.items():
        answer = client.post("/v1/audienceMembers:ingest", json=body, headers=headers)
        assert answer.status_code == 400, field
        error = answer.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert field in [v["field"] for v in error["details"][0]["fieldViolations"]]
    answer = client.post("/v1/audienceMembers:ingest", json=bodies["encoding"] | {"encoding": 1})
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    client.close()


# -- through the delivery engine, on PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def destination() -> ActivatorDescriptor:
    return activators(_manager_with(google_destination))["google"]


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def conn(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url) as connection:
        yield connection


def make_customers(conn: psycopg.Connection[Any], tenant: str, count: int, *, denied: tuple[int, ...] = ()) -> None:
    """``"tenant".customers`` as the loader writes it (the columns the engine reads); ``denied`` refused ads."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{tenant}"')
    conn.execute(
        f'CREATE TABLE "{tenant}".customers (customer_id text PRIMARY KEY, email text, emails text[], phone text, '
        "phones text[], consent_email text, consent_sms text, consent_ads text)"
    )
    conn.execute(
        f"INSERT INTO \"{tenant}\".customers SELECT 'c' || i, 'person.' || i || '@example.com', NULL, NULL, NULL, "
        "NULL, NULL, CASE WHEN i = ANY(%s) THEN 'denied' WHEN i %% 2 = 0 THEN 'granted' END "
        "FROM generate_series(1, %s) i",
        (list(denied), count),
    )
    conn.commit()
    ensure_schema(conn, tenant)


def run(
    conn: psycopg.Connection[Any],
    tenant: str,
    destination: ActivatorDescriptor,
    server: SandboxServer,
    deliveries: Any,
    **kwargs: Any,
) -> DeliveryReport:
    settings = settings_for(server)
    sender = GoogleAudienceSender(settings)
    try:
        options: dict[str, Any] = {"settings": FAST, "sender_settings": settings, "refresh_id": 1, "action": "add"}
        return deliver(
            conn,
            tenant,
            campaign=CAMPAIGN,
            destination=destination,
            sender=sender,
            deliveries=deliveries,
            **(options | kwargs),
        )
    finally:
        sender.close()


def export_row(i: int) -> Delivery:
    """A member as the segment export gives it (consent as exported: granted for even ids, else unknown)."""
    return delivery(i, consent_ads="granted" if i % 2 == 0 else None)


def test_google_is_an_installed_ads_destination_with_its_sender_and_sandbox() -> None:
    installed = activators()["google"]  # through the cdp entry point in pyproject.toml
    assert (installed.channel, installed.content, installed.limits.max_batch_size) == ("ads", False, 10_000)
    assert installed.load_sender() is GoogleAudienceSender
    assert installed.load_sandbox() is create_sandbox
    assert installed.settings_schema["properties"]["access_token"]["secret"] is True


def test_25k_members_go_in_three_requests_then_left_members_are_removed(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 25_000)
    server, app = served()
    added = run(conn, tenant, destination, server, (export_row(i) for i in range(1, 25_001)))

    assert [(r["path"], r["members"]) for r in app.state.requests] == [
        ("/v1/audienceMembers:ingest", 10_000),
        ("/v1/audienceMembers:ingest", 10_000),
        ("/v1/audienceMembers:ingest", 5_000),
    ]
    assert (added.accepted, added.requests, added.failed) == (25_000, 3, 0)
    assert len(app.state.audiences[AUDIENCE]) == 25_000
    consents = [c["adUserData"] for r in app.state.requests for c in r["consents"]]
    assert consents.count("CONSENT_GRANTED") == consents.count("CONSENT_STATUS_UNSPECIFIED") == 12_500

    removed = run(conn, tenant, destination, server, (export_row(i) for i in range(1, 4_001)), action="remove")
    assert [(r["path"], r["members"]) for r in app.state.requests[3:]] == [("/v1/audienceMembers:remove", 4_000)]
    assert app.state.requests[3]["consents"] == []  # a removal carries no consent
    assert (removed.accepted, removed.failed) == (4_000, 0)
    assert len(app.state.audiences[AUDIENCE]) == 21_000
    assert frozenset({f"emailAddress:{sha('person.1@example.com')}"}) not in app.state.audiences[AUDIENCE]


def test_a_customer_who_refused_ads_never_reaches_google(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 10, denied=(3, 7))
    server, app = served()
    report = run(conn, tenant, destination, server, [export_row(i) for i in range(1, 11)])

    assert (report.accepted, report.skipped_consent) == (8, 2)
    assert app.state.requests[0]["members"] == 8
    kept = app.state.audiences[AUDIENCE]
    assert frozenset({f"emailAddress:{sha('person.3@example.com')}"}) not in kept


def test_throttled_requests_are_retried_after_googles_retry_delay_measured_at_the_sandbox(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 300)
    server, app = served(FaultPlan(rate_limit_every=2), retry_delay_seconds=0.5)
    small = DeliverySettings(max_batch_size=100, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    report = run(conn, tenant, destination, server, [export_row(i) for i in range(1, 301)], settings=small)

    requests = app.state.requests
    assert [r["status"] for r in requests] == [200, 429, 200, 429, 200]
    waits = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(requests) if earlier["status"] == 429]
    assert len(waits) == 2
    assert all(wait >= 0.5 for wait in waits), waits  # only RetryInfo's delay explains half a second
    assert (report.accepted, report.retries, report.failed) == (300, 2, 0)
    assert len(app.state.audiences[AUDIENCE]) == 300


def test_an_outage_longer_than_the_retries_fails_the_batch_and_bad_credentials_fail_at_once(
    conn: psycopg.Connection[Any], tenant: str, destination: ActivatorDescriptor, served: Any
) -> None:
    make_customers(conn, tenant, 20)
    server, app = served(FaultPlan(outage_after=0, outage_requests=100), retry_delay_seconds=0.01)
    tries = DeliverySettings(max_attempts=3, backoff_base_seconds=0.01, backoff_max_seconds=0.02)
    report = run(conn, tenant, destination, server, [export_row(i) for i in range(1, 11)], settings=tries)
    assert [r["status"] for r in app.state.requests] == [503, 503, 503]
    assert (report.accepted, report.failed) == (0, 10)

    server, app = served(FaultPlan(session_uses=1))
    first = run(conn, tenant, destination, server, [export_row(i) for i in range(11, 16)], refresh_id=2)
    second = run(conn, tenant, destination, server, [export_row(i) for i in range(16, 21)], refresh_id=2)
    assert [r["status"] for r in app.state.requests] == [200, 401]  # a SendError: no retry
    assert (first.accepted, second.accepted, second.failed) == (5, 0, 5)
