"""The base stream for Shopify's GraphQL Admin API: one POST per page, cursor pagination, ``updated_at`` search
filters, and the calculated-cost throttle respected before a request is sent.

Shopify throttles by query cost, not request count (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits):
every response carries ``extensions.cost.throttleStatus``; a request runs only if the bucket holds its requested
cost. :class:`CostBudget` mirrors the bucket from the last response, and each page waits until the bucket has
refilled enough for its (known) requested cost, so a lone tap is never throttled. If something else drains the
bucket (another client of the same app), the ``THROTTLED`` answer (HTTP 200) is retried after exactly the time the
bucket needs, via the shared runtime's throttle retries.

Backfills (the first sync, and syncs starting more than ``bulk_threshold_days`` back) run as one bulk query operation
per stream instead (https://shopify.dev/docs/api/usage/bulk-operations/queries): ``bulkOperationRunQuery``, polls of
``node(id:)`` until ``COMPLETED``, the JSONL result downloaded from its signed ``url`` (without the access token)
into a temporary SQLite file, and each record reassembled from its own line and its nested connections' lines
(``__parentId``), whatever their order in the file. Page costs then no longer bound the throughput.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import requests
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.schema.source import SchemaDirectory, StreamSchema

from plugins.connectors.tap_runtime import CdpRESTStream, ExtractionFailure, RunBudgetReached
from plugins.core.dead_letters import ErrorType
from plugins.core.events import log_event
from plugins.core.redaction import redact_url
from plugins.core.serialization import loads

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

DEFAULT_API_VERSION = "2026-01"  # The version the queries and schemas follow.
MAX_QUERY_COST = 1000  # Shopify rejects a single query whose requested cost is higher (MAX_COST_EXCEEDED).
# Pages are sized to request about half the single-query maximum: after the refund of the unused part, a standard
# bucket (1000 points) still holds the next page's requested cost, so steady paging rarely has to wait.
TARGET_QUERY_COST = MAX_QUERY_COST // 2
CONNECTION_COST = 2  # A connection costs 2 plus `first` times the cost of one node.
MUTATION_COST = 10
BULK_RUN_MUTATION = """mutation RunBulkQuery($query: String!) {
  bulkOperationRunQuery(query: $query) { bulkOperation { id status } userErrors { field message code } }
}
"""
BULK_POLL_QUERY = """query BulkOperation($id: ID!) {
  node(id: $id) { ... on BulkOperation { id status errorCode objectCount rootObjectCount url } }
}
"""
BULK_POLL_COST = 1
BULK_FAILED_STATUSES = ("FAILED", "CANCELED", "CANCELING", "EXPIRED")
FRAGMENTS = {
    "Address": "fragment Address on MailingAddress { id address1 address2 city company country countryCodeV2 "
    "firstName lastName name phone province provinceCode zip }",
    "Money": "fragment Money on MoneyBag { shopMoney { amount currencyCode } "
    "presentmentMoney { amount currencyCode } }",
}


@dataclass(frozen=True)
class NestedConnection:
    """A connection inside each node (an order's line items): ``first`` per node in the stream's page, the rest
    fetched by follow-up queries on the one record (``order(id:) { lineItems(after:) }``)."""

    field: str
    first: int
    node_cost: int  # requested cost of one nested node
    selection: str
    node_type: str  # the nodes' GraphQL type: names their lines in a bulk operation's result

    @property
    def cost(self) -> int:
        return CONNECTION_COST + self.first * self.node_cost

    def render_bulk(self) -> str:
        """The connection in a bulk query: every node (no ``first``), each typed so its JSONL line can be placed."""
        return f"{self.field} {{ edges {{ node {{ __typename {self.selection} }} }} }}"

    def render(self, first: int | None = None, *, after: bool = False) -> str:
        arguments = f"first: {first or self.first}" + (", after: $after" if after else "")
        return f"{self.field}({arguments}) {{ nodes {{ {self.selection} }} pageInfo {{ hasNextPage endCursor }} }}"

    @property
    def follow_up_page_size(self) -> int:
        """Nodes per follow-up query: the record (1 point) plus the connection within TARGET_QUERY_COST."""
        return max(1, min(250, (TARGET_QUERY_COST - 1 - CONNECTION_COST) // self.node_cost))


METAFIELDS = NestedConnection(
    "metafields",
    first=10,
    node_cost=1,
    selection="id namespace key type value createdAt updatedAt",
    node_type="Metafield",
)


def with_fragments(document: str) -> str:
    """``document`` followed by the fragments it spreads."""
    return document + "\n".join(text for name, text in FRAGMENTS.items() if f"...{name}" in document)


@dataclass
class CostBudget:
    """The tap's mirror of Shopify's leaky bucket for this app and store, shared by all streams of a run."""

    maximum: float | None = None
    available: float = 0.0
    restore_rate: float = 0.0
    seen_at: float = 0.0
    # How the run measures and waits for the bucket to refill; tests pass a FakeClock and its ``advance``.
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def observe(self, throttle_status: Mapping[str, Any]) -> None:
        """Record the bucket as a response reported it."""
        self.maximum = float(throttle_status["maximumAvailable"])
        self.available = float(throttle_status["currentlyAvailable"])
        self.restore_rate = float(throttle_status["restoreRate"])
        self.seen_at = self.clock()

    def seconds_until(self, cost: float) -> float:
        """How long until the bucket holds ``cost`` points (0 if it does, or nothing is known yet)."""
        if self.maximum is None or self.restore_rate <= 0:
            return 0.0
        now_available = min(self.maximum, self.available + (self.clock() - self.seen_at) * self.restore_rate)
        return max(0.0, (min(cost, self.maximum) - now_available) / self.restore_rate)

    def spend(self, cost: float) -> None:
        """Account for a request about to be sent (the next response corrects the figure)."""
        if self.maximum is not None:
            self.available -= cost


class ShopifyCursorPaginator(BaseAPIPaginator[str | None]):
    """``pageInfo { hasNextPage endCursor }`` of the stream's root connection."""

    def __init__(self, root_field: str) -> None:
        super().__init__(None)
        self.root_field = root_field

    def _page_info(self, response: requests.Response) -> dict[str, Any]:
        data = response.json().get("data") or {}
        return dict((data.get(self.root_field) or {}).get("pageInfo") or {})

    def has_more(self, response: requests.Response) -> bool:
        return bool(self._page_info(response).get("hasNextPage"))

    def get_next(self, response: requests.Response) -> str | None:
        cursor = self._page_info(response).get("endCursor")
        return str(cursor) if cursor else None


def _flatten_connections(value: Any) -> Any:
    """``{"nodes": [...], "pageInfo": ...}`` connections become plain lists, recursively."""
    if isinstance(value, dict):
        if "nodes" in value and set(value) <= {"nodes", "pageInfo"}:
            return [_flatten_connections(node) for node in value["nodes"]]
        return {key: _flatten_connections(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_flatten_connections(item) for item in value]
    return value


class ShopifyStreamSchema(StreamSchema):  # type: ignore[type-arg]
    """schemas/<stream name>.json, without ``metafields`` unless the stream is configured to include them."""

    def get_stream_schema(self, stream: Any, stream_class: Any) -> dict[str, Any]:
        # Built once per stream: the SDK reads `stream.schema` for every record, and a copy each time cost a third
        # of the tap's CPU (benchmarks/tap_throughput.py).
        cached: dict[str, Any] | None = stream.__dict__.get("_cdp_schema")
        if cached is None:
            cached = copy.deepcopy(dict(super().get_stream_schema(stream, stream_class)))
            if not stream.with_metafields:
                cached.get("properties", {}).pop("metafields", None)
            stream.__dict__["_cdp_schema"] = cached
        return cached


class ShopifyStream(CdpRESTStream[str | None]):
    """One Admin API connection (``root_field``), sorted by ``UPDATED_AT`` and filtered on ``updated_at``.

    A subclass declares ``root_field``, ``selection`` (the node's fields, ``{metafields}`` where metafields may go
    and ``{<field>}`` for each of its ``nested`` connections), ``base_node_cost`` (the requested cost of one node
    without its nested connections or metafields, per Shopify's rules: objects 1, scalars 0, connections 2 + first x
    node), ``record_field`` (the root field that reads one record by id, for nested follow-ups) and whether the API
    can sort it (``sort_key``). The page size follows from the cost: as many
    nodes as fit in TARGET_QUERY_COST (half Shopify's 1000-point single-query limit), at most 250.
    """

    schema = ShopifyStreamSchema(SchemaDirectory(Path(__file__).parent / "schemas"))  # schemas/<stream name>.json
    rest_method = "POST"
    primary_keys = ("id",)
    replication_key = "updatedAt"
    root_field: str = ""
    selection: str = ""
    base_node_cost: int = 1
    nested: tuple[NestedConnection, ...] = ()
    record_field: str = ""
    sort_key: str | None = "UPDATED_AT"
    supports_metafields: bool = True
    #: Whether the running sync is a bulk operation (its result is not sorted).
    bulk: bool = False

    @property
    def is_sorted(self) -> bool:  # type: ignore[override]  # the SDK declares a plain attribute
        """Pages are sorted by ``UPDATED_AT`` where the API can sort; a bulk operation's result is not."""
        return self.sort_key is not None and not self.bulk

    @property
    def url_base(self) -> str:
        api_url = self.config.get("api_url")
        if api_url:
            return str(api_url).rstrip("/")
        shop = str(self.config["shop"]).removeprefix("https://").split(".", 1)[0]
        return f"https://{shop}.myshopify.com"

    @property
    def path(self) -> str:  # type: ignore[override]  # the SDK declares a plain attribute
        return f"/admin/api/{self.config.get('api_version') or DEFAULT_API_VERSION}/graphql.json"

    @property
    def http_headers(self) -> dict[str, str]:
        return {
            "X-Shopify-Access-Token": str(self.config["access_token"]),
            "Content-Type": "application/json",
            "User-Agent": "cdp-tap-shopify/0.1",
        }

    @property
    def records_jsonpath(self) -> str:  # type: ignore[override]
        return f"$.data.{self.root_field}.nodes[*]"

    @property
    def with_metafields(self) -> bool:
        return self.supports_metafields and self.name in (self.config.get("metafields") or [])

    @property
    def connections(self) -> tuple[NestedConnection, ...]:
        """The nested connections each node carries: the stream's own, plus metafields if configured."""
        return (*self.nested, METAFIELDS) if self.with_metafields else self.nested

    @property
    def node_cost(self) -> int:
        """The requested cost of one node: its own fields and its nested connections."""
        return self.base_node_cost + sum(connection.cost for connection in self.connections)

    @property
    def page_size(self) -> int:
        return max(1, min(250, (TARGET_QUERY_COST - CONNECTION_COST) // self.node_cost))

    @property
    def STATE_MSG_FREQUENCY(self) -> int:  # type: ignore[override]  # the SDK's name
        """Emit STATE after every page, so a sorted stream killed mid-run resumes from its last full page."""
        return self.page_size

    @property
    def requested_cost(self) -> int:
        """The requested cost of one page, as Shopify calculates it before running the query."""
        return CONNECTION_COST + self.page_size * self.node_cost

    @property
    def budget(self) -> CostBudget:
        """The run's bucket mirror, shared by every stream of the tap (the bucket is per app and store)."""
        tap = self._tap
        budget = getattr(tap, "cost_budget", None)
        if not isinstance(budget, CostBudget):
            budget = CostBudget()
            tap.cost_budget = budget  # type: ignore[attr-defined]
        return budget

    def query_document(self) -> str:
        """The GraphQL operation for one page of this stream."""
        selection = self.selection
        for connection in self.connections:
            selection = selection.replace(f"{{{connection.field}}}", connection.render())
        selection = selection.replace("{metafields}", "")  # metafields not configured for this stream
        sort = f", sortKey: {self.sort_key}" if self.sort_key else ""
        operation = "".join(part.title() for part in self.name.split("_"))
        return with_fragments(
            f"query {operation}($first: Int!, $after: String, $query: String) {{\n"
            f"  {self.root_field}(first: $first, after: $after, query: $query{sort}) {{\n"
            f"    nodes {{ {selection} }}\n"
            f"    pageInfo {{ hasNextPage endCursor }}\n"
            f"  }}\n}}\n"
        )

    def follow_up_document(self, connection: NestedConnection) -> str:
        """The query for the rest of one record's nested connection."""
        page = connection.render(connection.follow_up_page_size, after=True)
        operation = f"{self.record_field}{connection.field[0].upper()}{connection.field[1:]}"
        return with_fragments(
            f"query {operation}($id: ID!, $after: String) {{\n  {self.record_field}(id: $id) {{ {page} }}\n}}\n"
        )

    def search_query(self, context: Context | None) -> str | None:
        """The ``query:`` filter: records updated at or after the bookmark, else ``start_date``."""
        start = self.get_starting_replication_key_value(context) or self.config.get("start_date")
        return f"updated_at:>='{start}'" if start else None

    def get_url_params(self, context: Context | None, next_page_token: str | None) -> dict[str, Any]:
        return {}

    def prepare_request_payload(self, context: Context | None, next_page_token: str | None) -> dict[str, Any]:
        variables: dict[str, Any] = {"first": self.page_size, "query": self.search_query(context)}
        if next_page_token:
            variables["after"] = next_page_token
        return {"query": self.query_document(), "variables": variables}

    def prepare_request(  # The stream's pages; follow-ups pace themselves in run_query.
        self, context: Context | None, next_page_token: str | None
    ) -> requests.PreparedRequest:
        """Wait, before sending, until the bucket holds this page's requested cost."""
        wait = self.budget.seconds_until(self.requested_cost)
        if wait > 0:
            log_event(self.logger, "tap.pace", stream=self.name, seconds=round(wait, 3), cost=self.requested_cost)
            self.budget.sleep(wait)
        self.budget.spend(self.requested_cost)
        return super().prepare_request(context, next_page_token)

    def get_new_paginator(self) -> ShopifyCursorPaginator:
        return ShopifyCursorPaginator(self.root_field)

    # -- responses ----------------------------------------------------------------------------------------------

    @staticmethod
    def _body(response: requests.Response) -> dict[str, Any] | None:
        try:
            body = response.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _observe_cost(self, body: Mapping[str, Any]) -> dict[str, Any]:
        cost = dict((body.get("extensions") or {}).get("cost") or {})
        if cost.get("throttleStatus"):
            self.budget.observe(cost["throttleStatus"])
        return cost

    def throttle_delay(self, response: requests.Response) -> float | None:
        """HTTP 429 (Retry-After), or a ``THROTTLED`` GraphQL error: wait until the bucket refills enough."""
        delay = super().throttle_delay(response)
        if delay is not None or response.status_code != requests.codes.ok:
            return delay
        body = self._body(response)
        errors = body.get("errors") if body else None
        if not isinstance(errors, list) or not any(
            (error.get("extensions") or {}).get("code") == "THROTTLED" for error in errors if isinstance(error, dict)
        ):
            return None
        assert body is not None
        cost = self._observe_cost(body)
        status = cost.get("throttleStatus") or {}
        requested = float(cost.get("requestedQueryCost") or self.requested_cost)
        restore = float(status.get("restoreRate") or 0)
        if restore <= 0:
            return 0.0  # Unknown refill rate: exponential backoff with jitter.
        missing = requested - float(status.get("currentlyAvailable") or 0)
        return max(missing / restore, 0.05) * random.uniform(1.0, 1.2)  # noqa: S311  # jitter, not cryptography

    def validate_response(self, response: requests.Response) -> None:
        """The runtime's checks, then GraphQL errors: a rejected query fails the stream at once (no retry)."""
        super().validate_response(response)
        served = response.headers.get("X-Shopify-API-Version")
        wanted = self.config.get("api_version") or DEFAULT_API_VERSION
        if served and served != wanted and not getattr(self, "_version_warned", False):
            self._version_warned = True  # Shopify answers an unsupported version with the oldest supported one.
            log_event(self.logger, "tap.api_version_fallback", logging.WARNING, requested=wanted, served=served)
        body = self._body(response)
        if body is None:
            return
        self._observe_cost(body)
        errors = body.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else {"message": errors}
            code = (first.get("extensions") or {}).get("code") if isinstance(first, dict) else None
            message = first.get("message") if isinstance(first, dict) else str(first)
            raise ExtractionFailure(
                f"GraphQL query rejected{f' ({code})' if code else ''}: {self.redact(str(message))[:300]}",
                error_type=ErrorType.AUTH_FAILED if code == "ACCESS_DENIED" else ErrorType.EXTRACTION_FAILED,
                request=self.describe_request(response.request),
                status=response.status_code,
            )

    def describe_request(self, request: requests.PreparedRequest) -> dict[str, Any]:
        """Method and redacted URL, plus the GraphQL operation's root field and variables (never the token)."""
        described = super().describe_request(request)
        described["graphql_root_field"] = self.root_field
        body = request.body
        if body:
            with contextlib.suppress(ValueError):  # A body that is not JSON has no variables to record.
                described["variables"] = orjson.loads(body).get("variables")
        return described

    def run_query(self, payload: dict[str, Any], cost: int, context: Context | None) -> dict[str, Any]:
        """POST one GraphQL ``payload`` outside the stream's pages (a follow-up, a bulk operation), paced by the
        cost budget, through the runtime's :meth:`send`; the response body."""
        wait = self.budget.seconds_until(cost)
        if wait > 0:
            log_event(self.logger, "tap.pace", stream=self.name, seconds=round(wait, 3), cost=cost)
            self.budget.sleep(wait)
        self.budget.spend(cost)
        return dict(self.send("POST", self.get_url(context), context, json=payload).json())

    # -- bulk operations ----------------------------------------------------------------------------------------

    def use_bulk(self, context: Context | None) -> bool:
        """A bulk operation for the first sync and for syncs starting more than ``bulk_threshold_days`` back."""
        if not self.config.get("bulk_operations", True):
            return False
        start = self.get_starting_replication_key_value(context) or self.config.get("start_date")
        if not start:
            return True
        started = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        return datetime.now(UTC) - started > timedelta(days=float(self.config.get("bulk_threshold_days", 7)))

    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        bulk = self.use_bulk(context)
        if bulk != self.bulk:
            self.bulk = bulk
            self._state_manager = None  # The SDK caches is_sorted in the state manager: rebuild it.
        if not bulk:
            yield from super().get_records(context)
            return
        try:
            for record in self.bulk_records(context):
                processed = self.post_process(record, context)
                if processed is not None:
                    yield processed
        except RunBudgetReached:
            self.stop_for_run_budget(context)

    def bulk_query_document(self, context: Context | None) -> str:
        """The stream's query as one bulk query: the root connection filtered like the pages, every node of it."""
        selection = self.selection
        for connection in self.connections:
            selection = selection.replace(f"{{{connection.field}}}", connection.render_bulk())
        selection = selection.replace("{metafields}", "")
        search = self.search_query(context)
        arguments = f"(query: {orjson.dumps(search).decode()})" if search else ""
        return with_fragments(
            f"{{\n  {self.root_field}{arguments} {{\n    edges {{ node {{ {selection} }} }}\n  }}\n}}\n"
        )

    def _bulk_failure(self, message: str, context: Context | None, **details: Any) -> ExtractionFailure:
        request = {"method": "POST", "url": redact_url(self.get_url(context)), "params": {}}
        return ExtractionFailure(message, request={**request, "graphql_root_field": self.root_field, **details})

    def start_bulk_operation(self, context: Context | None) -> str:
        """Run the stream's bulk query; wait (polling) while the shop's bulk query slots are taken."""
        payload = {"query": BULK_RUN_MUTATION, "variables": {"query": self.bulk_query_document(context)}}
        deadline = time.monotonic() + float(self.config.get("bulk_timeout_seconds", 3600))
        while True:
            body = self.run_query(payload, MUTATION_COST, context)
            result = (body.get("data") or {}).get("bulkOperationRunQuery") or {}
            errors = result.get("userErrors") or []
            operation = result.get("bulkOperation") or {}
            if not errors and operation.get("id"):
                log_event(self.logger, "tap.bulk_started", stream=self.name, operation=operation["id"])
                return str(operation["id"])
            first = errors[0] if errors else {"message": "no bulk operation was created"}
            if first.get("code") != "OPERATION_IN_PROGRESS" or time.monotonic() > deadline:
                raise self._bulk_failure(f"bulk query refused: {self.redact(str(first.get('message')))}", context)
            self._wait_for_bulk(context, reason="operation_in_progress")

    def _wait_for_bulk(self, context: Context | None, **fields: Any) -> None:
        tap = self.cdp_tap
        if tap is not None:
            tap.check_run_budget()
        seconds = float(self.config.get("bulk_poll_interval_seconds", 5))
        log_event(self.logger, "tap.bulk_wait", stream=self.name, seconds=seconds, **fields)
        time.sleep(seconds)

    def wait_for_bulk_operation(self, operation_id: str, context: Context | None) -> dict[str, Any]:
        """Poll ``node(id:)`` until the operation is COMPLETED (its node), or fail the stream."""
        deadline = time.monotonic() + float(self.config.get("bulk_timeout_seconds", 3600))
        payload = {"query": BULK_POLL_QUERY, "variables": {"id": operation_id}}
        while True:
            node = (self.run_query(payload, BULK_POLL_COST, context).get("data") or {}).get("node") or {}
            status = node.get("status")
            if status == "COMPLETED":
                log_event(
                    self.logger,
                    "tap.bulk_completed",
                    stream=self.name,
                    operation=operation_id,
                    objects=node.get("objectCount"),
                    root_objects=node.get("rootObjectCount"),
                )
                return dict(node)
            if status in BULK_FAILED_STATUSES or not node:
                code = node.get("errorCode")
                failure = self._bulk_failure(
                    f"bulk operation {operation_id} ended {status or 'unknown'}{f' ({code})' if code else ''}",
                    context,
                    bulk_operation=operation_id,
                )
                if code == "ACCESS_DENIED":
                    failure.error_type = ErrorType.AUTH_FAILED
                raise failure
            if time.monotonic() > deadline:
                raise self._bulk_failure(
                    f"bulk operation {operation_id} still {status} after bulk_timeout_seconds",
                    context,
                    bulk_operation=operation_id,
                )
            self._wait_for_bulk(context, operation=operation_id, status=status)

    def _download(self, request: requests.PreparedRequest, _context: Context | None) -> requests.Response:
        """GET a bulk result through the runtime's retries: 429/5xx are retried, other errors fail at once."""
        response = self.requests_session.send(request, timeout=self.timeout, stream=True)
        self._last_response = response
        if response.status_code == requests.codes.too_many_requests or response.status_code >= 500:
            raise RetriableAPIError(f"{response.status_code} {response.reason} downloading a bulk result", response)
        if response.status_code >= 400:
            raise FatalAPIError(f"{response.status_code} {response.reason} downloading a bulk result")
        return response

    def bulk_records(self, context: Context | None) -> Iterator[dict[str, Any]]:
        """The stream's records from one bulk operation (see the module docstring)."""
        operation = self.wait_for_bulk_operation(self.start_bulk_operation(context), context)
        if not operation.get("url"):
            return  # Shopify gives no URL when the query matched nothing.
        # The signed URL carries no access token, and none is sent to it: a plain request, not the API headers.
        request = requests.Request("GET", str(operation["url"])).prepare()
        fields = {connection.node_type: connection.field for connection in self.connections}
        with tempfile.TemporaryDirectory(prefix="cdp-shopify-bulk-") as folder:
            database = sqlite3.connect(Path(folder) / "result.sqlite")
            try:
                with self.request_decorator(self._download)(request, context) as response:
                    database.execute("CREATE TABLE line (seq INTEGER PRIMARY KEY, parent TEXT, body BLOB)")
                    database.executemany(
                        "INSERT INTO line (parent, body) VALUES (?, ?)",
                        ((orjson.loads(line).get("__parentId"), line) for line in response.iter_lines() if line),
                    )
                database.execute("CREATE INDEX line_parent ON line (parent)")
                parents = database.execute("SELECT body FROM line WHERE parent IS NULL ORDER BY seq")
                for (body,) in parents:
                    record = dict(loads(body))  # exact: long integers and decimals as sent
                    for connection in self.connections:
                        record[connection.field] = {"nodes": []}
                    children = database.execute(
                        "SELECT body FROM line WHERE parent = ? ORDER BY seq", (str(record["id"]),)
                    )
                    for (child_body,) in children:
                        child = dict(loads(child_body))
                        child.pop("__parentId", None)
                        field = fields.get(str(child.pop("__typename", "")))
                        if field is not None:
                            record[field]["nodes"].append(child)
                    yield record
            finally:
                database.close()

    def complete_nested(self, record: dict[str, Any], context: Context | None) -> None:
        """Fetch the rest of every nested connection the stream's page cut short (an order's 21st line item...)."""
        for connection in self.connections:
            page = record.get(connection.field)
            if not isinstance(page, dict):
                continue
            nodes = list(page.get("nodes") or [])
            page_info = page.get("pageInfo") or {}
            follow_ups = 0
            while page_info.get("hasNextPage"):
                cost = 1 + CONNECTION_COST + connection.follow_up_page_size * connection.node_cost
                variables = {"id": record["id"], "after": page_info.get("endCursor")}
                body = self.run_query(
                    {"query": self.follow_up_document(connection), "variables": variables}, cost, context
                )
                more = ((body.get("data") or {}).get(self.record_field) or {}).get(connection.field) or {}
                nodes += more.get("nodes") or []
                page_info = more.get("pageInfo") or {}
                follow_ups += 1
            if follow_ups:
                log_event(
                    self.logger, "tap.nested_pages", stream=self.name, connection=connection.field, requests=follow_ups
                )
            record[connection.field] = {"nodes": nodes}

    def post_process(self, row: dict[str, Any], context: Context | None = None) -> dict[str, Any] | None:
        self.complete_nested(row, context)
        return dict(_flatten_connections(row))
