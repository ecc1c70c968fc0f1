"""The Salesforce sandbox follows Salesforce's documented REST and Bulk API 2.0 protocol."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
import requests

from plugins.connectors.sandbox import SandboxOptions, SandboxServer
from taps.salesforce.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    create_sandbox,
    salesforce_id,
)

V = "/services/data/v62.0"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(create_sandbox(SandboxOptions(records=450, seed=7), page_size=200)) as running:
        yield running


def get(server: SandboxServer, path: str, **kwargs: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return requests.get(server.url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_refresh_token_grant_returns_access_token_and_instance_url(server: SandboxServer) -> None:
    form = {
        "grant_type": "refresh_token",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "refresh_token": DEFAULT_REFRESH_TOKEN,
    }
    body = requests.post(server.url + "/services/oauth2/token", data=form, timeout=10).json()
    assert body["instance_url"] == server.url
    assert body["token_type"] == "Bearer"
    assert "expires_in" not in body  # Salesforce does not say; the session lasts until a 401.
    assert get(server, f"{V}/sobjects", headers={"Authorization": f"Bearer {body['access_token']}"}).ok


def test_wrong_refresh_token_answers_invalid_grant(server: SandboxServer) -> None:
    form = {
        "grant_type": "refresh_token",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "refresh_token": "nope",
    }
    response = requests.post(server.url + "/services/oauth2/token", data=form, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_data_calls_without_a_valid_session_answer_invalid_session_id(server: SandboxServer) -> None:
    response = get(server, f"{V}/sobjects/Account/describe", headers={"Authorization": "Bearer expired"})
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_describe_lists_typed_fields_including_custom_ones(server: SandboxServer) -> None:
    fields = {f["name"]: f for f in get(server, f"{V}/sobjects/Account/describe").json()["fields"]}
    assert fields["Customer_Tier__c"]["custom"] is True
    assert fields["Customer_Tier__c"]["type"] == "picklist"
    assert fields["BillingAddress"]["type"] == "address"
    assert fields["BillingCity"]["compoundFieldName"] == "BillingAddress"
    assert fields["Id"]["nillable"] is False


def test_query_pages_with_next_records_url_until_done(server: SandboxServer) -> None:
    page = get(server, f"{V}/query", params={"q": "SELECT Id, Name FROM Contact ORDER BY SystemModstamp"}).json()
    ids = [record["Id"] for record in page["records"]]
    while not page["done"]:
        page = get(server, page["nextRecordsUrl"]).json()
        ids += [record["Id"] for record in page["records"]]
    assert len(ids) == len(set(ids)) == page["totalSize"]
    assert page["records"][0]["attributes"]["type"] == "Contact"


def test_query_hides_deleted_rows_and_query_all_shows_them(server: SandboxServer) -> None:
    count = "SELECT COUNT() FROM Lead WHERE IsDeleted = true"
    assert get(server, f"{V}/query", params={"q": count}).json()["totalSize"] == 0
    assert get(server, f"{V}/queryAll", params={"q": count}).json()["totalSize"] > 0


def test_unknown_field_answers_invalid_field(server: SandboxServer) -> None:
    response = get(server, f"{V}/query", params={"q": "SELECT Id, Shoe_Size__c FROM Account"})
    assert response.status_code == 400
    error = response.json()[0]
    assert error["errorCode"] == "INVALID_FIELD"
    assert "No such column 'Shoe_Size__c' on entity 'Account'" in error["message"]


def test_quoted_datetime_literal_is_rejected_as_salesforce_does(server: SandboxServer) -> None:
    soql = "SELECT Id FROM Account WHERE SystemModstamp > '2024-01-01T00:00:00Z'"
    error = get(server, f"{V}/query", params={"q": soql}).json()[0]
    assert error["errorCode"] == "INVALID_FIELD"
    assert "should not be enclosed in quotes" in error["message"]


def test_filter_and_order_on_system_modstamp(server: SandboxServer) -> None:
    soql = (
        "SELECT Id, SystemModstamp FROM Account WHERE SystemModstamp >= 2024-01-02T00:00:00.000Z "
        "ORDER BY SystemModstamp"
    )
    records = get(server, f"{V}/query", params={"q": soql}, headers={"Sforce-Query-Options": "batchSize=2000"})
    stamps = [record["SystemModstamp"] for record in records.json()["records"]]
    assert stamps == sorted(stamps)
    assert all(stamp >= "2024-01-02T00:00:00.000+0000" for stamp in stamps)


def test_bulk_query_job_runs_to_complete_and_serves_csv_by_locator(server: SandboxServer) -> None:
    headers = {"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"}
    job = requests.post(
        f"{server.url}{V}/jobs/query",
        json={"operation": "query", "query": "SELECT Id, Name, IsDeleted FROM Opportunity"},
        headers=headers,
        timeout=10,
    ).json()
    assert job["state"] == "UploadComplete"
    states = [get(server, f"{V}/jobs/query/{job['id']}").json()["state"] for _ in range(2)]
    assert states == ["InProgress", "JobComplete"]
    rows, locator = [], None
    while locator != "null":
        params = {"maxRecords": 100, **({"locator": locator} if locator else {})}
        response = get(server, f"{V}/jobs/query/{job['id']}/results", params=params)
        chunk = list(csv.DictReader(io.StringIO(response.text)))
        assert int(response.headers["Sforce-NumberOfRecords"]) == len(chunk)
        rows += chunk
        locator = response.headers["Sforce-Locator"]
    assert len(rows) == get(server, f"{V}/query", params={"q": "SELECT COUNT() FROM Opportunity"}).json()["totalSize"]
    assert {row["IsDeleted"] for row in rows} == {"false"}


def test_bulk_query_rejects_compound_fields(server: SandboxServer) -> None:
    response = requests.post(
        f"{server.url}{V}/jobs/query",
        json={"operation": "query", "query": "SELECT Id, BillingAddress FROM Account"},
        headers={"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "compound fields" in response.json()[0]["message"]


def test_every_data_response_reports_api_usage(server: SandboxServer) -> None:
    first = get(server, f"{V}/sobjects").headers["Sforce-Limit-Info"]
    second = get(server, f"{V}/sobjects").headers["Sforce-Limit-Info"]
    used_first, used_second = (int(value.split("=")[1].split("/")[0]) for value in (first, second))
    assert used_second == used_first + 1


def test_request_limit_exceeded_past_the_daily_allocation() -> None:
    with SandboxServer(create_sandbox(SandboxOptions(records=5), api_daily_limit=2)) as small:
        assert get(small, f"{V}/sobjects").ok
        assert get(small, f"{V}/sobjects").ok
        response = get(small, f"{V}/sobjects")
    assert response.status_code == 403
    assert response.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_record_ids_are_18_characters_with_case_safe_suffix() -> None:
    record_id = salesforce_id("001", 123456789)
    assert len(record_id) == 18
    assert record_id.startswith("001")
    assert set(record_id[15:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")


def test_same_seed_same_data() -> None:
    first = create_sandbox(SandboxOptions(records=20, seed=3)).state.salesforce.org.rows["Contact"]
    second = create_sandbox(SandboxOptions(records=20, seed=3)).state.salesforce.org.rows["Contact"]
    assert first == second
