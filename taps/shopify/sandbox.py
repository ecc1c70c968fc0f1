"""A local emulator of Shopify's GraphQL Admin API for tests and the demo (``cdp sandbox serve shopify``).

It follows Shopify's documented protocol, not our tap's convenience:
- ``POST /admin/api/{version}/graphql.json`` with a JSON body ``{"query", "variables", "operationName"}``; the
  ``X-Shopify-Access-Token`` header is required (401 ``{"errors": "[API] Invalid API key or access token ..."}``
  otherwise); the response's ``X-Shopify-API-Version`` names the version served (2026-01, whatever was asked);
- the query runs through graphql-core against admin_schema.graphql, so a malformed or unknown-field query fails as at
  Shopify: HTTP 200 with an ``errors`` array and no data;
- calculated query cost (admin_graphql.CostCalculator) with ``extensions.cost {requestedQueryCost, actualQueryCost,
  throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}}``; a query over 1000 points is rejected with
  ``MAX_COST_EXCEEDED``; the leaky bucket (1000 points restoring 50/s by default, see :class:`CostBucket`) must hold
  the requested cost before a query runs, else ``THROTTLED`` (HTTP 200, ``actualQueryCost: null``); the difference
  between requested and actual cost is refunded afterwards;
- one mutation, ``customerUpdate(input: {id, firstName, lastName, note, tags})``, moves the customer's ``updatedAt``
  to now so incremental extraction can be tested;
- bulk query operations (https://shopify.dev/docs/api/usage/bulk-operations/queries): ``bulkOperationRunQuery(query:)``
  checks the query as Shopify does (one top-level connection, not ``node``; at most five connections, two levels
  deep; parents of nested connections select ``id``; problems are ``userErrors`` with code ``INVALID``) and allows
  ``max_bulk_queries`` running at a time per shop (1, as ``currentBulkOperation`` documents; 2026-01's guide allows
  five): one more is a ``userError`` with code ``OPERATION_IN_PROGRESS``. The operation reads the store when it is
  created; ``node(id:)`` and ``currentBulkOperation`` report it ``CREATED``/``RUNNING`` for
  ``bulk_polls_in_progress`` reads, then ``COMPLETED`` with ``url``, ``objectCount``, ``rootObjectCount`` and
  ``fileSize`` (or ``FAILED`` with ``errorCode`` ``ACCESS_DENIED`` / ``INTERNAL_SERVER_ERROR`` for ``denied`` /
  ``failing`` root fields). ``url`` is a signed link (no access token) to the JSONL result: one line per node,
  nested connections' nodes on lines of their own after their parent, with ``__parentId``.

Faults (``SandboxOptions.faults``, a :class:`plugins.connectors.sandbox.FaultPlan`), counted over GraphQL requests
(1-based):
- ``rate_limit_every`` N (+ ``_burst``): before those requests the bucket is emptied (another client of the same app
  spent it), so they are THROTTLED;
- ``server_error_every`` N (+ ``_burst``, ``server_error_status`` default 503): those requests answer 5xx;
- ``outage_after`` N + ``outage_requests`` M: requests N+1..N+M answer 503;
- ``slow_every`` N (+ ``_burst``, ``slow_seconds``): those requests answer only after that delay;
- ``malformed_every`` N (+ ``_burst``): those requests answer 200 with a truncated JSON body;
- ``failing: ["orders", ...]``: every query touching those root fields answers 500;
- ``denied: ["draftOrders", ...]``: those root fields answer ``ACCESS_DENIED`` (HTTP 200, no data), as for an app
  without the scope;
- ``bulk_polls_in_progress``: how many polls a bulk operation reports ``RUNNING`` before ``COMPLETED``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
from graphql import (
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import COUNTED_FAULT_SETTINGS, Fault, FaultPlan, SandboxOptions
from taps.shopify.admin_graphql import (
    RESOURCES,
    SCHEMA_VERSION,
    CostCalculator,
    ExecutionContext,
    admin_schema,
    bulk_jsonl,
    bulk_query_problems,
    top_level_resolver,
)
from taps.shopify.synthetic_store import Record, SyntheticShop, iso

DEFAULT_ACCESS_TOKEN = "shpat_cdp_sandbox"  # noqa: S105  # the sandbox's public test token
MAX_QUERY_COST = 1000
SUPPORTED_FAULTS = (
    *COUNTED_FAULT_SETTINGS,
    "failing",
    "denied",
    "bulk_polls_in_progress",
)
UNAUTHORIZED = "[API] Invalid API key or access token (unrecognized login or wrong password)"
RATE_LIMITS_DOC = "https://shopify.dev/api/usage/rate-limits"
ACCESS_SCOPES_DOC = "https://shopify.dev/api/usage/access-scopes"


@dataclass
class CostBucket:
    """Shopify's leaky bucket of query-cost points for one app on one store.

    ``maximum`` and ``restore_rate`` default to the classic standard plan (1000 points, 50 points/s); plans differ
    (Shopify documents 100-2000 points/s today), so tests pass smaller or faster buckets.
    """

    maximum: float = 1000.0
    restore_rate: float = 50.0
    available: float = field(init=False)
    lowest: float = field(init=False)
    throttled: int = 0
    clock: Callable[[], float] = time.monotonic  # Tests share a FakeClock with the tap's CostBudget.
    _updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.available = self.lowest = self.maximum
        self._updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.available = min(self.maximum, self.available + (now - self._updated) * self.restore_rate)
        self._updated = now

    def try_spend(self, cost: float) -> bool:
        """Take ``cost`` points if the bucket holds them; False (and counted as throttled) otherwise."""
        self._refill()
        if cost > self.available:
            self.throttled += 1
            return False
        self.available -= cost
        self.lowest = min(self.lowest, self.available)
        return True

    def refund(self, points: float) -> None:
        self._refill()
        self.available = min(self.maximum, self.available + max(0.0, points))

    def drain(self) -> None:
        self._refill()
        self.available = 0.0

    def status(self) -> dict[str, float]:
        self._refill()
        return {
            "maximumAvailable": float(self.maximum),
            "currentlyAvailable": float(int(self.available)),
            "restoreRate": float(self.restore_rate),
        }


@dataclass
class BulkOperation:
    """One bulk query operation: its result is read when it is created; reads move it through Shopify's statuses."""

    number: int
    query: str
    created_at: str
    result: bytes = b""
    object_count: int = 0
    root_object_count: int = 0
    reads_in_progress: int = 1
    error_code: str | None = None
    signature: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    status: str = "CREATED"
    completed_at: str | None = None

    @property
    def gid(self) -> str:
        return f"gid://shopify/BulkOperation/{self.number}"

    @property
    def running(self) -> bool:
        return self.status in ("CREATED", "RUNNING")

    def read(self, base_url: str) -> Record:
        """The operation as ``node(id:)`` or ``currentBulkOperation`` returns it; each read is one poll."""
        if self.running:
            if self.reads_in_progress > 0:
                self.reads_in_progress -= 1
                self.status = "RUNNING"
            else:
                self.status = "FAILED" if self.error_code else "COMPLETED"
                self.completed_at = iso(datetime.now(UTC))
        done = self.status == "COMPLETED"
        return {
            "id": self.gid,
            "status": self.status,
            "type": "QUERY",
            "query": self.query,
            "createdAt": self.created_at,
            "completedAt": self.completed_at,
            "errorCode": self.error_code if self.status == "FAILED" else None,
            "objectCount": str(self.object_count if done else 0),
            "rootObjectCount": str(self.root_object_count if done else 0),
            "fileSize": str(len(self.result)) if done and self.result else None,
            "url": f"{base_url}/bulk-operations/{self.number}.jsonl?signature={self.signature}"
            if done and self.result
            else None,
            "partialDataUrl": None,
        }


@dataclass
class ShopifySandboxState:
    """The store, its cost bucket and the request log the tests read."""

    options: SandboxOptions
    bucket: CostBucket
    shop: SyntheticShop = field(init=False)
    faults: FaultPlan = field(init=False)  # from options; a test may swap it mid-run
    requests_seen: int = 0
    operations: list[dict[str, Any]] = field(default_factory=list)
    max_bulk_queries: int = 1
    bulk_operations: list[BulkOperation] = field(default_factory=list)
    base_url: str = ""  # where the sandbox is reached, for bulk result URLs

    def __post_init__(self) -> None:
        self.options.faults.require_only("shopify", SUPPORTED_FAULTS)
        self.faults = self.options.faults
        self.shop = SyntheticShop(records=self.options.records, seed=self.options.seed)

    @property
    def access_token(self) -> str:
        return self.options.credentials.get("access_token", DEFAULT_ACCESS_TOKEN)

    def update_customer(self, values: dict[str, Any]) -> Record:
        """Apply ``customerUpdate``: the given fields, and ``updatedAt`` moves to now (strictly later than before)."""
        customer = next((c for c in self.shop.customers if c["id"] == values.get("id")), None)
        if customer is None:
            return {"customer": None, "userErrors": [{"field": ["id"], "message": "Customer does not exist"}]}
        for name in ("firstName", "lastName", "note", "tags"):
            if name in values:
                customer[name] = values[name]
        customer["displayName"] = f"{customer['firstName'] or ''} {customer['lastName'] or ''}".strip()
        previous = datetime.fromisoformat(customer["updatedAt"].replace("Z", "+00:00"))
        customer["updatedAt"] = iso(max(datetime.now(UTC), previous + timedelta(seconds=1)))
        return {"customer": customer, "userErrors": []}


def _snake(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


def _record_by_id(records: Callable[[], list[Record]], _info: Any, id: str) -> Record | None:
    """``order(id:)`` and friends: one record by its global id, or null."""
    return next((record for record in records() if record["id"] == id), None)


def _graphql_errors(errors: list[GraphQLError]) -> list[dict[str, Any]]:
    """graphql-core errors in Shopify's wording where it differs (unknown fields are ``undefinedField``)."""
    formatted = []
    for error in errors:
        entry: dict[str, Any] = dict(error.formatted)
        message = error.message
        if message.startswith("Cannot query field "):
            field_name, type_name = message.split("'")[1], message.split("'")[3]
            entry["message"] = f"Field '{field_name}' doesn't exist on type '{type_name}'"
            entry["extensions"] = {"code": "undefinedField", "typeName": type_name, "fieldName": field_name}
        formatted.append(entry)
    return formatted


def _json(body: dict[str, Any], status: int = 200, version: str = SCHEMA_VERSION) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"X-Shopify-API-Version": version, "X-Request-Id": str(uuid.uuid4())},
    )


def _bulk_user_error(message: str, code: str = "INVALID") -> Record:
    return {"bulkOperation": None, "userErrors": [{"field": ["query"], "message": message, "code": code}]}


def create_sandbox(
    options: SandboxOptions | None = None, *, bucket: CostBucket | None = None, max_bulk_queries: int = 1
) -> Starlette:
    """The Shopify sandbox as an ASGI app; ``app.state.shopify`` is its :class:`ShopifySandboxState`."""
    state = ShopifySandboxState(options or SandboxOptions(), bucket or CostBucket(), max_bulk_queries=max_bulk_queries)
    schema = admin_schema()
    root: dict[str, Callable[..., Any]] = {name: top_level_resolver(state.shop, name) for name in RESOURCES}
    records_by_id: dict[str, Callable[[], list[Record]]] = {
        "customer": lambda: state.shop.customers,
        "order": lambda: state.shop.orders,
        "product": lambda: state.shop.products,
        "inventoryItem": lambda: state.shop.inventory_items,
        "draftOrder": lambda: state.shop.draft_orders,
    }
    for field_name, records in records_by_id.items():
        root[field_name] = partial(_record_by_id, records)

    def run_bulk_query(_info: Any, query: str, groupObjects: bool = False) -> Record:  # GraphQL's name
        """``bulkOperationRunQuery``: check the query, read the store, and start the operation."""
        if groupObjects:
            return _bulk_user_error("groupObjects: true is not supported by the sandbox; use the default (false).")
        running = [operation for operation in state.bulk_operations if operation.running]
        if len(running) >= state.max_bulk_queries:
            message = f"A bulk query operation for this app and shop is already in progress: {running[0].gid}."
            return _bulk_user_error(message, "OPERATION_IN_PROGRESS")
        try:
            document = parse(query)
        except GraphQLError as error:
            return _bulk_user_error(f"Invalid bulk query: {error.message}")
        problems = [error.message for error in validate(schema, document)] or bulk_query_problems(schema, document)
        if problems:
            return _bulk_user_error(f"Invalid bulk query: {problems[0]}")
        operation = BulkOperation(
            len(state.bulk_operations) + 1,
            query,
            iso(datetime.now(UTC)),
            reads_in_progress=state.faults.bulk_polls_in_progress,
        )
        root_field = next(
            d.selection_set.selections[0].name.value  # type: ignore[attr-defined]
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        )
        fault = state.faults.resource_fault([root_field])
        if fault is Fault.DENIED:
            operation.error_code = "ACCESS_DENIED"
        elif fault is Fault.FAILING:
            operation.error_code = "INTERNAL_SERVER_ERROR"
        else:
            result = execute_sync(schema, document, root_value=root, context_value=ExecutionContext(bulk=True))
            if result.errors or not result.data:
                operation.error_code = "INTERNAL_SERVER_ERROR"
            else:
                operation.result, operation.object_count, operation.root_object_count = bulk_jsonl(
                    next(iter(result.data.values()))
                )
        state.bulk_operations.append(operation)
        return {"bulkOperation": operation.read(state.base_url), "userErrors": []}

    def bulk_operation_by_id(gid: str) -> BulkOperation | None:
        return next((operation for operation in state.bulk_operations if operation.gid == gid), None)

    def node(_info: Any, id: str) -> Record | None:  # GraphQL's name
        operation = bulk_operation_by_id(id)
        if operation is not None:
            return operation.read(state.base_url)
        kind = id.removeprefix("gid://shopify/").split("/", 1)[0]
        records = records_by_id.get(kind[:1].lower() + kind[1:])
        return _record_by_id(records, _info, id) if records else None

    def current_bulk_operation(_info: Any, type: str = "QUERY") -> Record | None:  # GraphQL's name
        if type != "QUERY" or not state.bulk_operations:
            return None
        return state.bulk_operations[-1].read(state.base_url)

    root["node"] = node
    root["currentBulkOperation"] = current_bulk_operation
    mutations = {
        "customerUpdate": lambda _info, input: state.update_customer(input),
        "bulkOperationRunQuery": run_bulk_query,
    }

    async def bulk_result(request: Request) -> Response:
        """The signed result URL of a completed bulk operation (no access token: it is a pre-signed link)."""
        number = str(request.path_params["number"])
        operation = bulk_operation_by_id(f"gid://shopify/BulkOperation/{number}")
        if operation is None or request.query_params.get("signature") != operation.signature:
            return Response(b"AccessDenied: the signature does not match", status_code=403, media_type="text/plain")
        return Response(operation.result, media_type="application/jsonl")

    async def graphql_endpoint(request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") != state.access_token:
            return JSONResponse({"errors": UNAUTHORIZED}, status_code=401)
        state.base_url = str(request.base_url).rstrip("/")
        state.requests_seen += 1
        fault = state.faults.counted_fault(state.requests_seen)
        if fault is Fault.SERVER_ERROR:
            return JSONResponse(
                {"errors": "Internal Server Error"}, status_code=state.faults.server_error_status or 503
            )
        if fault is Fault.OUTAGE:
            return JSONResponse({"errors": "Service Unavailable"}, status_code=503)
        if fault is Fault.SLOW:
            await asyncio.sleep(state.faults.slow_seconds)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"errors": "Bad Request: the body is not valid JSON"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _json({"errors": [{"message": "No query string was present"}]})
        response = run_query(body, drain_bucket=fault is Fault.RATE_LIMIT)
        if isinstance(response, Response):
            return response
        if fault is Fault.MALFORMED:
            return Response(orjson.dumps(response)[:-25], media_type="application/json")
        return _json(response)

    def run_query(body: dict[str, Any], *, drain_bucket: bool = False) -> dict[str, Any] | Response:
        """Parse, validate, cost, throttle and execute one GraphQL request: Shopify's order of checks."""
        try:
            document = parse(body["query"])
        except GraphQLError as error:
            return {"errors": _graphql_errors([error])}
        errors = validate(schema, document)
        if errors:
            return {"errors": _graphql_errors(errors)}
        variables = body.get("variables") or {}
        operation = get_operation_ast(document, body.get("operationName"))
        if not isinstance(operation, OperationDefinitionNode):
            return {"errors": [{"message": "An operation name is required when the document has several"}]}
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        calculator = CostCalculator(schema, operation, fragments, variables)
        requested = calculator.requested()
        if calculator.errors:
            return {"errors": _graphql_errors(calculator.errors)}
        if requested > MAX_QUERY_COST:
            message = (
                f"Query cost is {requested}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).\n\n"
                f"See {RATE_LIMITS_DOC} for more information on how the cost of a query is calculated."
            )
            details = {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": MAX_QUERY_COST}
            return {"errors": [{"message": message, "extensions": {**details, "documentation": RATE_LIMITS_DOC}}]}
        if drain_bucket:
            state.bucket.drain()
        if not state.bucket.try_spend(requested):
            return {
                "errors": [
                    {"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": RATE_LIMITS_DOC}}
                ],
                "extensions": {
                    "cost": {
                        "requestedQueryCost": requested,
                        "actualQueryCost": None,
                        "throttleStatus": state.bucket.status(),
                    }
                },
            }
        root_fields = {selection.name.value for selection in operation.selection_set.selections}  # type: ignore[attr-defined]
        resource_fault = state.faults.resource_fault(root_fields)
        if resource_fault is Fault.FAILING:
            state.bucket.refund(requested)
            return JSONResponse({"errors": "Internal Server Error"}, status_code=500)
        denied = state.faults.denied_resources(root_fields)
        if denied:
            state.bucket.refund(requested)
            scope = f"`read_{_snake(denied[0])}` access scope."
            denial = {
                "message": f"Access denied for {denied[0]} field. Required access: {scope}",
                "path": [denied[0]],
                "extensions": {"code": "ACCESS_DENIED", "documentation": ACCESS_SCOPES_DOC, "requiredAccess": scope},
            }
            return {"data": None, "errors": [denial]}
        context = ExecutionContext()
        result = execute_sync(
            schema,
            document,
            root_value=mutations if operation.operation.value == "mutation" else root,
            context_value=context,
            variable_values=variables,
            operation_name=body.get("operationName"),
        )
        actual = calculator.actual(result.data)
        state.bucket.refund(requested - actual)
        state.operations.append(
            {"root_fields": sorted(root_fields), "variables": variables, "requested": requested, "actual": actual}
        )
        response: dict[str, Any] = {}
        if result.errors:
            response["errors"] = _graphql_errors(list(result.errors))
        response["data"] = result.data
        extensions: dict[str, Any] = {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": actual,
                "throttleStatus": state.bucket.status(),
            }
        }
        if context.search:
            extensions["search"] = context.search
        response["extensions"] = extensions
        return response

    app = Starlette(
        routes=[
            Route("/admin/api/{version}/graphql.json", graphql_endpoint, methods=["POST"]),
            Route("/bulk-operations/{number:int}.jsonl", bulk_result, methods=["GET"]),
        ]
    )
    app.state.shopify = state
    return app
