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
  to now so incremental extraction can be tested.

Faults (``SandboxOptions.faults``, a :class:`plugins.sandbox.FaultPlan`), counted over GraphQL requests (1-based):
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

from plugins.descriptors import SandboxOptions
from plugins.sandbox import COUNTED_FAULT_SETTINGS, Fault, FaultPlan
from taps.shopify.admin_graphql import (
    RESOURCES,
    SCHEMA_VERSION,
    CostCalculator,
    ExecutionContext,
    admin_schema,
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
    _updated: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.available = self.lowest = self.maximum

    def _refill(self) -> None:
        now = time.monotonic()
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
class ShopifySandboxState:
    """The store, its cost bucket and the request log the tests read."""

    options: SandboxOptions
    bucket: CostBucket
    shop: SyntheticShop = field(init=False)
    faults: FaultPlan = field(init=False)  # from options; a test may swap it mid-run
    requests_seen: int = 0
    operations: list[dict[str, Any]] = field(default_factory=list)

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


def create_sandbox(options: SandboxOptions | None = None, *, bucket: CostBucket | None = None) -> Starlette:
    """The Shopify sandbox as an ASGI app; ``app.state.shopify`` is its :class:`ShopifySandboxState`."""
    state = ShopifySandboxState(options or SandboxOptions(), bucket or CostBucket())
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
    mutations = {"customerUpdate": lambda _info, input: state.update_customer(input)}

    async def graphql_endpoint(request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") != state.access_token:
            return JSONResponse({"errors": UNAUTHORIZED}, status_code=401)
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

    app = Starlette(routes=[Route("/admin/api/{version}/graphql.json", graphql_endpoint, methods=["POST"])])
    app.state.shopify = state
    return app
