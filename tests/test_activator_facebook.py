"""Facebook Custom Audiences: the hashes against Meta's own SDK, the sender against the Marketing API sandbox (sessions,
batches at the 10,000 limit, removals, errors), and throttling retried through the delivery engine."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pytest
from facebook_business.adobjects.customaudience import CustomAudience
from facebook_business.adobjects.serverside.normalize import Normalize
from starlette.applications import Starlette

from activators.facebook.normalize import SCHEMA, key_column, members_table, payload_rows
from activators.facebook.sandbox import DEFAULT_ACCESS_TOKEN, DEFAULT_AUDIENCE_ID, FacebookState, create_sandbox
from activators.facebook.sender import FacebookSender
from plugins.activation import DeliverySettings, deliver
from plugins.connectors.sandbox import FaultPlan, SandboxOptions, SandboxServer
from plugins.descriptors import Delivery, MemberOutcome, RetryableSendError, SendError
from plugins.manager import activators, plugin_manager
from tests.test_activation_delivery import make_customers

# The SDK has two normalisers: CustomAudience.format_params (the customer-list upload) and serverside Normalize (the
# Conversions API). Each case names the one whose rule is Meta's documented rule for that key: the customer-list one,
# except for PHONE (Meta: "remove ... any leading zeros", which only the serverside one does) and ZIP (Meta: "no
# white space", likewise).
SERVERSIDE_FIELD = {"PHONE": "ph", "ZIP": "zp", "COUNTRY": "country"}
HASH_CASES = [
    ("EMAIL", "  John.Doe@Example.COM ", "audience"),
    ("EMAIL", "ANA.Lima@Exämple.org\t", "audience"),
    ("EMAIL", "o'brien+ads@mail.example.ie.", "audience"),
    ("FN", "Chloé", "audience"),
    ("FN", "  Mary Ann ", "audience"),
    ("FN", "Olúmìdé", "audience"),
    ("LN", "O'Brien", "audience"),
    ("LN", "Núñez-García", "audience"),
    ("LN", "ŁUKASIEWICZ", "audience"),
    ("FN", "Zoë", "audience"),
    ("CT", "São Paulo", "audience"),
    ("CT", "  New York ", "audience"),
    ("ST", "CA", "audience"),
    ("ST", "Île-de-France", "audience"),
    ("COUNTRY", "US", "audience"),
    ("COUNTRY", " de ", "serverside"),
    ("COUNTRY", "GB", "serverside"),
    ("PHONE", "+1 (415) 555-0100", "audience"),
    ("PHONE", "+44 20 7946 0958", "serverside"),
    ("PHONE", "0044 20 7946 0958", "serverside"),
    ("PHONE", "  +49 30 901820  ", "serverside"),
    ("PHONE", "+33-1-23-45-67-89", "audience"),
    ("ZIP", "94103-1234", "serverside"),
    ("ZIP", "SW1A 1AA", "serverside"),
    ("ZIP", "75008", "audience"),
]


def sdk_hash(key: str, value: str, oracle: str) -> str:
    if oracle == "audience":
        params = CustomAudience.format_params([key], [[value]], is_raw=True)
        hashed: str = params["payload"]["data"][0][0]
        return hashed
    return str(Normalize.normalize_field(SERVERSIDE_FIELD[key], value))


@pytest.mark.parametrize(("key", "value", "oracle"), HASH_CASES)
def test_hashes_equal_the_facebook_business_sdk(key: str, value: str, oracle: str) -> None:
    assert key_column(key, pa.array([value])) == [sdk_hash(key, value, oracle)]


def test_one_normalisation_for_a_whole_column_and_blanks_for_what_is_not_an_identifier() -> None:
    values = [" A@B.example ", None, "", "  ", "Germany", "de"]
    assert key_column("EMAIL", pa.array(values[:4])) == [sdk_hash("EMAIL", " A@B.example ", "audience"), "", "", ""]
    # Meta takes ISO 3166-1 alpha-2 codes only: a country name is left blank rather than guessed.
    assert key_column("COUNTRY", pa.array(values[4:])) == ["", sdk_hash("COUNTRY", "de", "serverside")]
    assert key_column("EXTERN_ID", pa.array([" cus_AbC1 "])) == ["cus_AbC1"]  # sent as it is, not hashed


def test_rows_without_an_email_phone_or_name_are_not_matchable_and_ids_are_json_escaped() -> None:
    members = [{"customer_id": 'c"1\\', "country": "DE"}, {"customer_id": "c2", "email": "x@y.example"}]
    rows, matchable = payload_rows(members_table(members))
    assert matchable.to_pylist() == [False, True]
    parsed = [json.loads(row) for row in rows.to_pylist()]
    assert parsed[0][SCHEMA.index("EXTERN_ID")] == 'c"1\\'
    assert parsed[1][SCHEMA.index("EMAIL")] == sdk_hash("EMAIL", "x@y.example", "audience")
    assert [len(row) for row in parsed] == [len(SCHEMA)] * 2


# -- the sender against the sandbox ------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[Any]:
    """``served(faults=...)`` -> (server, app); stopped at the end."""
    servers: list[SandboxServer] = []

    def start(faults: FaultPlan | None = None, **credentials: str) -> tuple[SandboxServer, Starlette]:
        app = create_sandbox(SandboxOptions(faults=faults or FaultPlan(), credentials=credentials))
        server = SandboxServer(app)
        server.start()
        servers.append(server)
        return server, app

    yield start
    for server in servers:
        server.stop()


def settings(server: SandboxServer, **extra: Any) -> dict[str, Any]:
    return {"access_token": DEFAULT_ACCESS_TOKEN, "audience_id": DEFAULT_AUDIENCE_ID, "base_url": server.url, **extra}


def state(app: Starlette) -> FacebookState:
    sandbox_state: FacebookState = app.state.facebook
    return sandbox_state


def person(i: int) -> Delivery:
    columns = {
        "customer_id": f"c{i}",
        "email": f" Person{i}@Example.com",
        "phone": f"+1 415 {i // 10000:03d} {i % 10000:04d}",
        "first_name": "Chloé",
        "last_name": f"Name{i}",
        "city": "New York",
        "region": "NY",
        "postal_code": "10001-0001",
        "country": "US",
    }
    return Delivery(f"c{i}", columns, f"spring:c{i}:a")


def batches(deliveries: list[Delivery], size: int = 10_000) -> Iterator[list[Delivery]]:
    for start in range(0, len(deliveries), size):
        yield deliveries[start : start + size]


def test_25k_members_go_in_3_requests_of_one_session_the_last_flagged(served: Any) -> None:
    server, app = served()
    sender = FacebookSender(settings(server, estimated_num_total=25_000))
    results = [result for batch in batches([person(i) for i in range(25_000)]) for result in sender.add(batch)]
    sender.close()
    requests = state(app).requests
    assert [request["rows"] for request in requests] == [10_000, 10_000, 5_000]
    sessions = [request["session"] for request in requests]
    assert len({session["session_id"] for session in sessions}) == 1
    assert [session["batch_seq"] for session in sessions] == [1, 2, 3]
    assert [session["last_batch_flag"] for session in sessions] == [False, False, True]
    assert all(session["estimated_num_total"] == 25_000 for session in sessions)
    (record,) = state(app).sessions.values()
    assert record.finished
    assert record.num_received == 25_000
    assert record.num_invalid_entries == 0
    assert len(state(app).audiences[DEFAULT_AUDIENCE_ID].members) == 25_000
    assert {result.outcome for result in results} == {MemberOutcome.ACCEPTED}
    assert results[-1].provider_reference == f"session {sessions[0]['session_id']} batch 3"


def test_without_a_total_close_flags_the_last_batch_with_one_repeated_row(served: Any) -> None:
    server, app = served()
    sender = FacebookSender(settings(server))
    for batch in batches([person(i) for i in range(12)], size=5):
        sender.add(batch)
    sender.close()
    requests = state(app).requests
    assert [request["rows"] for request in requests] == [5, 5, 2, 1]
    assert [request["session"]["batch_seq"] for request in requests] == [1, 2, 3, 4]
    assert [request["session"]["last_batch_flag"] for request in requests] == [False, False, False, True]
    assert all(record.finished for record in state(app).sessions.values())
    assert len(state(app).audiences[DEFAULT_AUDIENCE_ID].members) == 12  # the repeated row added nobody


def test_members_who_left_are_removed_by_their_left_export_columns(served: Any) -> None:
    server, app = served()
    sender = FacebookSender(settings(server))
    sender.add([person(i) for i in range(5)])
    # The export's `left` rows carry customer_id, email, phone, names and country only.
    left_columns = ("customer_id", "email", "phone", "first_name", "last_name", "full_name", "country")
    left = [
        Delivery(d.member_id, {k: v for k, v in d.columns.items() if k in left_columns}, d.idempotency_key)
        for d in (person(1), person(3))
    ]
    results = sender.remove(left)
    sender.close()
    assert [result.outcome for result in results] == [MemberOutcome.ACCEPTED] * 2
    remaining = {member["EXTERN_ID"] for member in state(app).audiences[DEFAULT_AUDIENCE_ID].members.values()}
    assert remaining == {"c0", "c2", "c4"}
    removals = [request for request in state(app).requests if request["action"] == "remove"]
    assert [r["session"]["last_batch_flag"] for r in removals] == [False, True]
    adds = [request for request in state(app).requests if request["action"] == "add"]
    assert removals[0]["session"]["session_id"] != adds[0]["session"]["session_id"]  # one session per action


def test_a_member_without_an_identifier_is_rejected_and_not_sent(served: Any) -> None:
    server, app = served()
    sender = FacebookSender(settings(server))
    nobody = Delivery("c9", {"customer_id": "c9", "country": "US"}, "spring:c9:a")
    results = sender.add([person(1), nobody])
    sender.close()
    assert [(r.member_id, r.outcome) for r in results] == [
        ("c1", MemberOutcome.ACCEPTED),
        ("c9", MemberOutcome.REJECTED),
    ]
    assert "no identifier" in results[1].reason
    assert state(app).requests[0]["rows"] == 1


def test_a_throttled_batch_is_retried_after_the_usage_header_wait_through_deliver(
    served: Any, postgres_url: str
) -> None:
    server, app = served(FaultPlan(rate_limit_every=2))  # every second upload answers code 80003
    tenant = f"t{uuid.uuid4().hex[:10]}"
    waits: list[float] = []
    destination = activators(plugin_manager())["facebook"]
    sender = FacebookSender(settings(server), sleep=waits.append)  # the session's closing request waits too
    with psycopg.connect(postgres_url) as conn:
        make_customers(conn, tenant, 30)
        members = [person(i) for i in range(1, 31)]
        report = deliver(
            conn,
            tenant,
            campaign="spring",
            destination=destination,
            sender=sender,
            refresh_id=1,
            action="add",
            deliveries=members,
            settings=DeliverySettings(max_batch_size=10, backoff_base_seconds=0.01),
            sleep=waits.append,
        )
    sender.close()
    assert report.accepted == 30
    assert report.failed == 0
    assert report.retries >= 1
    assert waits
    assert min(waits) >= 60
    assert len(state(app).audiences[DEFAULT_AUDIENCE_ID].members) == 30
    (record,) = state(app).sessions.values()
    assert record.batch_seqs == [1, 2, 3, 4]
    assert record.finished
    assert len(waits) == 3  # requests 2, 4 and 6 (the closing one) were throttled


@pytest.mark.parametrize(
    ("faults", "credentials", "error", "words"),
    [
        (FaultPlan(), {"access_token": "EAA-other-token"}, SendError, "access token was refused (code 190"),
        (FaultPlan(session_uses=1), {}, SendError, "code 190/463"),
        (FaultPlan(server_error_every=1), {}, RetryableSendError, "HTTP 500"),
        (FaultPlan(outage_after=0, outage_requests=5), {}, RetryableSendError, "HTTP 503"),
        (FaultPlan(throttled=(DEFAULT_AUDIENCE_ID,)), {}, RetryableSendError, "throttled"),
        (FaultPlan(), {"audience_ids": "999"}, SendError, "code 100/33"),
    ],
)
def test_api_errors_become_one_line_errors_that_say_whether_to_retry(
    served: Any, faults: FaultPlan, credentials: dict[str, str], error: type[Exception], words: str, caplog: Any
) -> None:
    server, _ = served(faults, **credentials)
    sender = FacebookSender(settings(server))
    caplog.set_level(logging.DEBUG)
    sender.add([person(1)]) if faults.session_uses else None  # the token's one good use
    with pytest.raises(error) as raised:
        sender.add([person(2)])
    sender.close()
    message = str(raised.value)
    assert words in message
    assert "\n" not in message
    assert type(raised.value) is error
    assert DEFAULT_ACCESS_TOKEN not in message + caplog.text + repr(sender)


def test_the_wait_comes_from_the_business_use_case_usage_header(served: Any) -> None:
    server, app = served(FaultPlan(throttled=(DEFAULT_AUDIENCE_ID,)))
    state(app).throttle_minutes = 3
    sender = FacebookSender(settings(server))
    with pytest.raises(RetryableSendError) as raised:
        sender.add([person(1)])
    sender.close()
    assert raised.value.retry_after == 180


def test_more_than_10000_members_are_refused_before_and_by_the_sandbox(served: Any) -> None:
    server, app = served()
    sender = FacebookSender(settings(server))
    with pytest.raises(SendError, match="at most 10000"):
        sender.add([person(i) for i in range(10_001)])
    sender.close()
    payload = {"schema": ["EXTERN_ID"], "data": [[f"c{i}"] for i in range(10_001)]}
    answer = httpx.post(
        f"{server.url}/v25.0/{DEFAULT_AUDIENCE_ID}/users",
        data={"payload": json.dumps(payload), "access_token": DEFAULT_ACCESS_TOKEN},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 100
    assert "10000" in answer.json()["error"]["message"]
    assert state(app).audiences[DEFAULT_AUDIENCE_ID].members == {}


def test_the_sandbox_counts_unhashed_values_invalid_and_keeps_batch_seq_in_order(served: Any) -> None:
    server, app = served()
    url = f"{server.url}/v25.0/{DEFAULT_AUDIENCE_ID}/users"

    def post(data: list[list[str]], seq: int, last: bool = False) -> httpx.Response:
        session = {"session_id": 7, "batch_seq": seq, "last_batch_flag": last}
        form = {"payload": json.dumps({"schema": ["EMAIL", "COUNTRY"], "data": data}), "session": json.dumps(session)}
        return httpx.post(url, data=form, headers={"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"})

    hashed = key_column("EMAIL", pa.array(["a@b.example"]))[0]
    answer = post([[hashed, ""], ["a@b.example", "us"]], 1).json()
    assert answer == {
        "audience_id": DEFAULT_AUDIENCE_ID,
        "session_id": 7,
        "num_received": 2,
        "num_invalid_entries": 1,
        "invalid_entry_samples": answer["invalid_entry_samples"],
    }
    assert post([[hashed, ""]], 3).json()["error"]["message"].endswith("expected 2")
    assert post([[hashed, ""]], 2, last=True).status_code == 200
    assert "already finished" in post([[hashed, ""]], 3).json()["error"]["message"]
    assert len(state(app).audiences[DEFAULT_AUDIENCE_ID].members) == 1
