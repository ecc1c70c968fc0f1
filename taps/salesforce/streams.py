"""One stream per configured sObject, its schema from ``describe``; REST query or Bulk API 2.0 by size."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import requests
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.streams.rest import HTTPRequest, PageContext

from plugins.connectors.tap_runtime import ExtractionFailure
from plugins.core.events import log_event
from taps.salesforce.client import (
    SalesforceStream,
    compound_components,
    csv_converter,
    describe_schema,
    format_datetime,
    normalise_datetime,
    parse_datetime,
    soql_datetime,
)

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

    from taps.salesforce.tap import TapSalesforce

REPLICATION_KEY = "SystemModstamp"  # Changes on every user or system edit, and is indexed: the sync key to use.
COMPOUND_TYPES = ("address", "location")
DEFAULT_OBJECTS = ["Account", "Contact", "Lead", "Opportunity", "Campaign", "CampaignMember"]


# What Salesforce answers as nextRecordsUrl: /services/data/v62.0/query/01gD0000002HU6KIAW-2000 (or queryAll).
_NEXT_RECORDS_URL_RE = re.compile(r"/services/data/v\d+\.\d+/query(?:All)?/[A-Za-z0-9-]+")


class QueryPaginator(BaseAPIPaginator[str | None]):
    """REST query paging: while ``done`` is false, ``nextRecordsUrl`` is the next batch (requested without params)."""

    def __init__(self) -> None:
        super().__init__(None)

    def has_more(self, response: requests.Response) -> bool:
        return not response.json().get("done", True)

    def get_next(self, response: requests.Response) -> str | None:
        next_url = response.json().get("nextRecordsUrl")
        if not next_url:
            return None
        # Appended to instance_url and sent with the token: "@evil.example/x" would make the host another one.
        if not isinstance(next_url, str) or not _NEXT_RECORDS_URL_RE.fullmatch(next_url):
            raise ExtractionFailure(
                f"Salesforce answered a nextRecordsUrl that is not a query locator path ({str(next_url)[:80]!r}); "
                "it is not followed, so the access token is never sent elsewhere"
            )
        return next_url


class SObjectStream(SalesforceStream):
    """One sObject (``Account``, ``Lead``, a custom ``Invoice__c``...), incremental on ``SystemModstamp``.

    Each sync counts the rows to extract (``SELECT COUNT()``); up to ``bulk_threshold`` it pages the REST query
    ordered by ``SystemModstamp``, so a stopped or crashed run resumes from its last record; above, it runs Bulk
    API 2.0 query jobs, one per ``bulk_window_days`` of ``SystemModstamp``: their results are unordered, so the
    bookmark advances to each window's end once the window is extracted.
    """

    primary_keys = ("Id",)
    path = "/query"  # Names the endpoint in the SDK's request metrics; requests are built in get_http_request.
    STATE_MSG_FREQUENCY = 1000

    def __init__(self, tap: TapSalesforce, describe: Mapping[str, Any]) -> None:
        self.describe = dict(describe)
        schema = describe_schema(self.describe)
        super().__init__(tap=tap, name=str(self.describe["name"]), schema=schema)
        properties: dict[str, dict[str, Any]] = schema["properties"]
        self.replication_key = REPLICATION_KEY if REPLICATION_KEY in properties else None  # type: ignore[assignment]
        self._types = {name: str(prop.get("x-salesforce-type")) for name, prop in properties.items()}
        self._datetime_fields = [name for name, sf_type in self._types.items() if sf_type == "datetime"]
        self._compounds = compound_components(self.describe.get("fields", []))
        self._converters = {name: csv_converter(prop) for name, prop in properties.items()}
        self.bulk = False
        self.current_window: dict[str, Any] | None = None

    # -- which API -----------------------------------------------------------------------------------------------

    @property
    def is_sorted(self) -> bool:
        """REST queries are ``ORDER BY SystemModstamp``; Bulk API 2.0 jobs cannot be ordered."""
        return not self.bulk and self.replication_key is not None

    def _use_bulk(self, bulk: bool) -> None:
        if bulk != self.bulk:
            self.bulk = bulk
            self._state_manager = None  # The SDK caches is_sorted in the state manager: rebuild it.

    @property
    def endpoint(self) -> str:
        return "queryAll" if self.config.get("query_all") else "query"

    @property
    def http_headers(self) -> dict[str, str]:
        return {**super().http_headers, "Sforce-Query-Options": f"batchSize={int(self.config.get('page_size', 2000))}"}

    # -- SOQL ----------------------------------------------------------------------------------------------------

    def lower_bound(self, context: Context | None) -> str | None:
        """The ``SystemModstamp`` to start at: the bookmark, else ``start_date``; None for everything."""
        if self.replication_key is None:
            return None
        bookmark = self.get_starting_replication_key_value(context)
        if bookmark:
            return soql_datetime(str(bookmark))
        start_date = self.config.get("start_date")
        return soql_datetime(str(start_date)) if start_date else None

    @staticmethod
    def where(lower: str | None, upper: str | None = None) -> str:
        # ">=": rows sharing the bookmark's timestamp but not yet extracted are not lost (at-least-once).
        conditions = [f"{REPLICATION_KEY} >= {lower}"] if lower else []
        conditions += [f"{REPLICATION_KEY} < {upper}"] if upper else []
        return f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def soql(self, lower: str | None, upper: str | None = None, *, bulk: bool) -> str:
        fields = [name for name, sf_type in self._types.items() if not (bulk and sf_type in COMPOUND_TYPES)]
        order = "" if bulk else f" ORDER BY {self.replication_key or 'Id'} ASC"
        # Names come from describe and the validated `objects` setting, values are normalised datetimes.
        return f"SELECT {', '.join(fields)} FROM {self.name}{self.where(lower, upper)}{order}"  # noqa: S608

    def count(self, lower: str | None, upper: str | None = None) -> int:
        query = f"SELECT COUNT() FROM {self.name}{self.where(lower, upper)}"  # noqa: S608  # see soql()
        response = self.send("GET", f"{self.url_base}/{self.endpoint}", params={"q": query})
        return int(response.json()["totalSize"])

    # -- REST query ----------------------------------------------------------------------------------------------

    def get_new_paginator(self) -> QueryPaginator:
        return QueryPaginator()

    def get_http_request(self, *, page: PageContext[str | None]) -> HTTPRequest:
        if page.next_page_token:
            return HTTPRequest(url=f"{self._tap.instance_url}{page.next_page_token}", headers=self.http_headers)
        query = self.soql(self.lower_bound(page.stream_context), bulk=False)
        return HTTPRequest(url=f"{self.url_base}/{self.endpoint}", params={"q": query}, headers=self.http_headers)

    def parse_response(self, response: requests.Response) -> Iterable[dict[str, Any]]:
        yield from response.json().get("records", [])

    def request_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        total = self.count(self.lower_bound(context))
        bulk = total > int(self.config.get("bulk_threshold", 50_000))
        self._use_bulk(bulk)
        lower = self.lower_bound(context)
        self.current_window = {"api": "bulk" if bulk else "rest", REPLICATION_KEY: {"gte": lower}, "rows": total}
        log_event(self.logger, "tap.salesforce.extract", stream=self.name, rows=total, api=self.current_window["api"])
        if bulk:
            yield from self.bulk_records(context)
        else:
            yield from super().request_records(context)

    def post_process(self, row: dict[str, Any], context: Context | None = None) -> dict[str, Any] | None:
        row.pop("attributes", None)
        for name in self._datetime_fields:
            value = row.get(name)
            if isinstance(value, str) and value:
                row[name] = normalise_datetime(value)
        return row

    # -- Bulk API 2.0 --------------------------------------------------------------------------------------------

    def bulk_windows(self, context: Context | None) -> list[tuple[str | None, str | None]]:
        """``SystemModstamp`` windows of ``bulk_window_days`` over the rows to extract, oldest first.

        A bulk job's results are unordered, so progress is only certain at a window's end: each closed window is
        checkpointed, and a crash or a run-budget stop resumes from the last complete window. The windows span the
        oldest to the newest row; the last one is open-ended, so rows changed during the sync are not missed.
        """
        days = float(self.config.get("bulk_window_days", 90))
        lower = self.lower_bound(context)
        if days <= 0 or self.replication_key is None:
            return [(lower, None)]
        oldest, newest = self.edge(lower, "ASC"), self.edge(lower, "DESC")
        if oldest is None or newest is None:
            return [(lower, None)]
        windows: list[tuple[str | None, str | None]] = []
        start, step = parse_datetime(oldest), timedelta(days=days)
        while start + step <= parse_datetime(newest):
            windows.append((format_datetime(start), format_datetime(start + step)))
            start += step
        return [*windows, (format_datetime(start), None)]

    def edge(self, lower: str | None, direction: str) -> str | None:
        """The oldest (``ASC``) or newest (``DESC``) ``SystemModstamp`` at or after ``lower``; None if no rows."""
        query = (
            f"SELECT {REPLICATION_KEY} FROM {self.name}{self.where(lower)} "  # noqa: S608  # see soql()
            f"ORDER BY {REPLICATION_KEY} {direction} LIMIT 1"
        )
        records = self.send("GET", f"{self.url_base}/{self.endpoint}", params={"q": query}).json()["records"]
        return normalise_datetime(str(records[0][REPLICATION_KEY])) if records else None

    def bulk_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """One Bulk API 2.0 job per window, each window checkpointed once its results are all read."""
        for lower, upper in self.bulk_windows(context):
            if upper is None or self.count(lower, upper) > 0:  # An empty window costs a COUNT(), not a job.
                yield from self.bulk_job_records(lower, upper)
            if upper is not None:
                self.checkpoint(upper, context)

    def bulk_job_records(self, lower: str | None, upper: str | None) -> Iterable[dict[str, Any]]:
        """Create a query job, poll it to ``JobComplete``, read its CSV result sets by ``Sforce-Locator``."""
        jobs_url = f"{self.url_base}/jobs/query"
        body = {
            "operation": "queryAll" if self.config.get("query_all") else "query",
            "query": self.soql(lower, upper, bulk=True),
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        job_id = str(self.send("POST", jobs_url, json=body).json()["id"])
        assert self.current_window is not None
        self.current_window.update({REPLICATION_KEY: {"gte": lower, "lt": upper}, "bulk_job": job_id})
        self._wait_for_job(f"{jobs_url}/{job_id}")
        locator: str | None = None
        while True:
            params: dict[str, Any] = {"maxRecords": int(self.config.get("bulk_max_records", 50_000))}
            if locator:
                params["locator"] = locator
            response = self.send("GET", f"{jobs_url}/{job_id}/results", params=params)
            for row in csv.DictReader(io.StringIO(response.content.decode("utf-8"))):
                yield self.from_csv(row)
            locator = response.headers.get("Sforce-Locator")
            if not locator or locator == "null":
                break
        self.send("DELETE", f"{jobs_url}/{job_id}")  # Results are read: free the org's bulk storage.

    def _wait_for_job(self, job_url: str) -> None:
        interval = float(self.config.get("bulk_poll_interval_seconds", 5))
        deadline = time.monotonic() + float(self.config.get("bulk_timeout_seconds", 3600))
        while True:
            response = self.send("GET", job_url)
            info = response.json()
            state = info.get("state")
            if state == "JobComplete":
                return
            if state in ("Failed", "Aborted"):
                raise ExtractionFailure(
                    f"Bulk API query job {info.get('id')} ended {state}: {info.get('errorMessage', 'no message')}",
                    request=self.describe_request(response.request),
                    status=response.status_code,
                )
            if time.monotonic() > deadline:
                raise ExtractionFailure(
                    f"Bulk API query job {info.get('id')} still {state} after bulk_timeout_seconds",
                    request=self.describe_request(response.request),
                    status=response.status_code,
                )
            time.sleep(interval)

    def from_csv(self, row: Mapping[str, str]) -> dict[str, Any]:
        """A CSV row as typed values, compound fields rebuilt from their components as the REST API returns them."""
        record = {name: self._converters[name](text) for name, text in row.items() if name in self._converters}
        for compound, components in self._compounds.items():
            if compound in self._types:
                value = {key: record.get(component) for component, key in components.items()}
                record[compound] = value if any(v is not None for v in value.values()) else None
        return record
