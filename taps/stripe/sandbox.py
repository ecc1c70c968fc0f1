"""A local emulator of Stripe's REST API for tests and the demo (``cdp sandbox serve stripe``).

It follows Stripe's documented protocol, not our tap's convenience:
- auth: ``Authorization: Bearer <key>`` or HTTP Basic with the key as user name; 401 otherwise;
- lists: ``GET /v1/<objects>`` newest first, ``limit`` 1..100 (default 10), ``starting_after`` / ``ending_before``
  object ids (mutually exclusive), ``created`` as an exact Unix time or ``created[gt|gte|lt|lte]``; unknown parameters
  are rejected with 400 as Stripe does; responses ``{"object": "list", "url", "has_more", "data"}``;
- create: ``POST /v1/customers`` with a form-encoded body;
- errors: ``{"error": {"type", "code", "message", "param", "doc_url"}}`` and a ``Request-Id`` header;
- faults (``SandboxOptions.faults``): ``rate_limit_every`` (every Nth request answers 429 ``rate_limit``),
  ``server_error_every`` (every Nth answers 500 ``api_error``).
"""

from __future__ import annotations

import base64
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plugins.descriptors import SandboxOptions
from plugins.synthetic import object_id, person

DEFAULT_API_KEY = "sk_test_cdp_sandbox"
FIRST_CREATED = 1_704_067_200  # 2024-01-01T00:00:00Z
LIST_PARAMS = {"limit", "starting_after", "ending_before", "created", "expand[]"}
CREATED_OPERATORS = ("gt", "gte", "lt", "lte")


class StripeError(Exception):
    """An error answered in Stripe's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "type": self.type,
                "message": str(self),
                "code": self.code,
                "param": self.param,
                "doc_url": f"https://stripe.com/docs/error-codes/{self.code}" if self.code else None,
            }
        }
        return JSONResponse(body, status_code=self.status)


def _customer(rng: random.Random, index: int, created: int) -> dict[str, Any]:
    who = person(rng, index)
    address = {
        "city": who.city,
        "country": who.country,
        "line1": who.line1,
        "line2": None,
        "postal_code": who.postal_code,
        "state": who.state,
    }
    return {
        "id": object_id("cus", rng),
        "object": "customer",
        "address": address,
        "balance": rng.choice([0, 0, 0, -500, 1250]),
        "created": created,
        "currency": rng.choice(["usd", "eur", "gbp", None]),
        "default_source": None,
        "delinquent": rng.random() < 0.05,
        "description": None,
        "discount": None,
        "email": who.email,
        "invoice_prefix": f"{rng.randrange(16**8):08X}",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
        "livemode": False,
        "metadata": {"crm_id": str(rng.randrange(10**6))} if rng.random() < 0.5 else {},
        "name": who.name,
        "next_invoice_sequence": 1,
        "phone": who.phone,
        "preferred_locales": rng.choice([[], ["en"], ["fr-FR", "en"]]),
        "shipping": {"address": address, "name": who.name, "phone": who.phone} if rng.random() < 0.3 else None,
        "tax_exempt": "none",
        "test_clock": None,
    }


@dataclass
class StripeState:
    """The sandbox's objects, newest first, as Stripe lists them."""

    options: SandboxOptions
    customers: list[dict[str, Any]] = field(default_factory=list)
    requests_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        rng = random.Random(self.options.seed)
        created = [FIRST_CREATED + i * 3600 for i in range(self.options.records)]
        self.customers = [_customer(rng, i, ts) for i, ts in enumerate(created)][::-1]
        self._rng = rng

    def add_customer(self, fields: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            newest = self.customers[0]["created"] if self.customers else FIRST_CREATED
            customer = _customer(self._rng, len(self.customers), newest + 1)
            customer.update({key: value for key, value in fields.items() if key in ("name", "email", "phone")})
            self.customers.insert(0, customer)
        return customer


def _authorised_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().split(":", 1)[0]
        except ValueError:
            return None
    return None


def _check_auth(request: Request, state: StripeState) -> None:
    key = _authorised_key(request)
    if not key:
        raise StripeError(401, "You did not provide an API key. Provide it in the Authorization header.")
    if key != state.options.credentials.get("api_key", DEFAULT_API_KEY):
        masked = f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}"
        raise StripeError(401, f"Invalid API Key provided: {masked}", code="api_key_invalid")


def _inject_faults(state: StripeState) -> None:
    with state.lock:
        state.requests_seen += 1
        count = state.requests_seen
    rate_every = state.options.faults.get("rate_limit_every")
    if rate_every and count % int(rate_every) == 0:
        raise StripeError(429, "Too many requests hit the API too quickly.", code="rate_limit")
    error_every = state.options.faults.get("server_error_every")
    if error_every and count % int(error_every) == 0:
        raise StripeError(500, "An unknown error occurred.", type_="api_error")


def _int_param(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise StripeError(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name) from None


def _created_filter(request: Request) -> list[tuple[str, int]]:
    conditions = []
    for key, raw in request.query_params.multi_items():
        if key == "created":
            conditions.append(("eq", _int_param(key, raw)))
        elif key.startswith("created[") and key.endswith("]"):
            operator = key[len("created[") : -1]
            if operator not in CREATED_OPERATORS:
                raise StripeError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
            conditions.append((operator, _int_param(key, raw)))
    return conditions


def _matches(created: int, conditions: list[tuple[str, int]]) -> bool:
    checks = {
        "eq": created.__eq__,
        "gt": created.__gt__,
        "gte": created.__ge__,
        "lt": created.__lt__,
        "lte": created.__le__,
    }
    return all(checks[operator](value) for operator, value in conditions)


def _list_page(request: Request, objects: list[dict[str, Any]], url: str) -> dict[str, Any]:
    for key in request.query_params:
        base = key.split("[", 1)[0]
        if base not in {param.split("[", 1)[0] for param in LIST_PARAMS}:
            raise StripeError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
    params = request.query_params
    limit = _int_param("limit", params.get("limit", "10"))
    if not 1 <= limit <= 100:
        raise StripeError(
            400, "Invalid limit: must be between 1 and 100", code="parameter_invalid_integer", param="limit"
        )
    if "starting_after" in params and "ending_before" in params:
        raise StripeError(400, "You may only specify one of these parameters: ending_before, starting_after.")
    conditions = _created_filter(request)
    matching = [obj for obj in objects if _matches(obj["created"], conditions)]
    ids = [obj["id"] for obj in matching]
    if "starting_after" in params:
        cursor = params["starting_after"]
        if cursor not in ids:
            raise StripeError(400, f"No such object: '{cursor}'", code="resource_missing", param="starting_after")
        start = ids.index(cursor) + 1
        page = matching[start : start + limit]
        has_more = start + limit < len(matching)
    elif "ending_before" in params:
        cursor = params["ending_before"]
        if cursor not in ids:
            raise StripeError(400, f"No such object: '{cursor}'", code="resource_missing", param="ending_before")
        end = ids.index(cursor)
        page = matching[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        page = matching[:limit]
        has_more = limit < len(matching)
    return {"object": "list", "url": url, "has_more": has_more, "data": page}


def create_sandbox(options: SandboxOptions | None = None) -> Starlette:
    """The Stripe sandbox as an ASGI app."""
    state = StripeState(options or SandboxOptions())

    async def customers(request: Request) -> JSONResponse:
        request_id = f"req_{uuid.uuid4().hex[:14]}"
        try:
            _check_auth(request, state)
            _inject_faults(state)
            if request.method == "POST":
                form = await request.form()
                body: dict[str, Any] = state.add_customer({key: str(value) for key, value in form.items()})
            else:
                with state.lock:
                    snapshot = list(state.customers)
                body = _list_page(request, snapshot, "/v1/customers")
            response = JSONResponse(body)
        except StripeError as error:
            response = error.response()
        response.headers["Request-Id"] = request_id
        return response

    app = Starlette(routes=[Route("/v1/customers", customers, methods=["GET", "POST"])])
    app.state.stripe = state
    return app
