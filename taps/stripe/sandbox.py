"""A local emulator of Stripe's REST API for tests and the demo (``cdp sandbox serve stripe``).

It follows Stripe's documented protocol, not our tap's convenience:
- auth: ``Authorization: Bearer <key>`` or HTTP Basic with the key as user name; 401 otherwise;
- lists: ``GET /v1/{customers,charges,invoices,subscriptions,payment_intents,products,prices,refunds,events}``, newest
  first (they cannot be sorted otherwise), ``limit`` 1..100 (default 10), ``starting_after`` / ``ending_before`` object
  ids (mutually exclusive), ``created`` as an exact Unix time or ``created[gt|gte|lt|lte]``, plus every filter of
  each list in Stripe's API reference (``LIST_PARAMETERS``: ``email``, ``ids``, ``price``, ``lookup_keys``,
  ``recurring[interval]``, ``current_period_end[gte]``...), arrays as ``name[]=`` or ``name[0]=`` (how the official
  clients send them); every parameter is either filtered as Stripe filters it or answered 400 ``parameter_unknown``
  (``expand[]`` too: the sandbox never expands, so expandable fields are always ids); responses
  ``{"object": "list", "url", "has_more", "data"}``;
- subscriptions: without ``status``, canceled subscriptions are left out (``status=all`` includes them);
- events: only the last 30 days are listed (Stripe's retention), filterable by ``type`` (``*`` wildcards) or
  ``types[]``; creating or updating a customer emits ``customer.created`` / ``customer.updated``;
- create/update: ``POST /v1/customers`` (created now) and ``POST /v1/customers/{id}`` with a form-encoded body
  (``name``, ``email``, ``phone``, ``description``, ``metadata[...]``; other parameters: 400 ``parameter_unknown``);
  an ``Idempotency-Key`` header saves the first answer (errors included) for 24 hours and replays it, with
  ``Idempotent-Replayed: true``, to a retry with the same parameters; the same key with other parameters is 400
  ``idempotency_error``;
- errors: ``{"error": {"type", "code", "message", "param", "doc_url"}}`` and a ``Request-Id`` header.

Synthetic data: ``SandboxOptions.records`` customers, payment intents and charges (one charge each); a tenth as many
products (two prices each) and refunds; half as many subscriptions and invoices; events for recent changes. Same seed,
same objects. Objects are created one hour apart from 2024-01-01; events fall in the last 30 days.

Faults (``SandboxOptions.faults``, a :class:`plugins.connectors.sandbox.FaultPlan`), counted per path so each list can
be targeted (``only``: these paths, e.g. ``/v1/charges``):
- ``rate_limit_every`` N (+ ``rate_limit_burst`` K, default 1): the last K of every N requests answer 429 with
  ``code: rate_limit``, as Stripe does (Stripe sends no Retry-After);
- ``server_error_every`` N (+ ``server_error_burst``, ``server_error_status`` default 500): ``api_error``;
- ``outage_after`` N + ``outage_requests`` M: requests N+1..N+M to each path answer 503 ``api_error``;
- ``slow_every`` N (+ ``slow_burst``, ``slow_seconds`` default 2): the answer comes late (client timeouts);
- ``malformed_every`` N (+ ``malformed_burst``): a 200 whose JSON body is cut off mid-page;
- ``failing``: these paths always answer 500 ``api_error``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import random
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugins.connectors.sandbox import COUNTED_FAULT_SETTINGS, Fault, FaultPlan, SandboxOptions
from plugins.connectors.synthetic import Population, SyntheticPerson, object_id, population

DEFAULT_API_KEY = "sk_test_cdp_sandbox"
FIRST_CREATED = 1_704_067_200  # 2024-01-01T00:00:00Z
EVENT_RETENTION_SECONDS = 30 * 86_400
API_VERSION = "2024-06-20"
SUPPORTED_FAULTS = (
    *COUNTED_FAULT_SETTINGS,
    "only",
    "failing",
)

OBJECT_TYPES = (
    "customers",
    "charges",
    "invoices",
    "subscriptions",
    "payment_intents",
    "products",
    "prices",
    "refunds",
    "events",
)
IDEMPOTENCY_KEY_SECONDS = 24 * 3600  # Stripe keeps an idempotency key's first answer this long
MAX_IDEMPOTENCY_KEY_LENGTH = 255
CUSTOMER_FIELDS = ("name", "email", "phone", "description")  # what POST /v1/customers stores (and metadata[...])


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
                "doc_url": f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}" if self.code else None,
            }
        }
        return JSONResponse(body, status_code=self.status)


# -- synthetic objects ------------------------------------------------------------------------------------------


def _address(who: SyntheticPerson) -> dict[str, Any]:
    return {
        "city": who.city,
        "country": who.country,
        "line1": who.line1,
        "line2": None,
        "postal_code": who.postal_code,
        "state": who.state,
    }


def _customer(rng: random.Random, people: Population, index: int, created: int) -> dict[str, Any]:
    who = people.member("stripe", index)
    address = _address(who)
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


_PRODUCT_NAMES = [
    "Starter plan",
    "Pro plan",
    "Équipe",
    "Enterprise seat",
    "Add-on: SSO",
    "Café beans 1 kg",
    "Gift card",
]


def _product(rng: random.Random, index: int, created: int) -> dict[str, Any]:
    return {
        "id": object_id("prod", rng),
        "object": "product",
        "active": rng.random() > 0.1,
        "created": created,
        "default_price": None,
        "description": rng.choice([None, "Billed monthly", "Données hébergées en UE"]),
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": {"sku": f"SKU-{index:05d}"},
        "name": f"{rng.choice(_PRODUCT_NAMES)} #{index}",
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": created,
        "url": None,
    }


def _price(rng: random.Random, product: dict[str, Any], created: int, recurring: bool) -> dict[str, Any]:
    amount = rng.choice([500, 999, 1900, 4900, 12000])
    return {
        "id": object_id("price", rng, 24),
        "object": "price",
        "active": product["active"],
        "billing_scheme": "per_unit",
        "created": created,
        "currency": rng.choice(["usd", "eur"]),
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": product["id"],
        "recurring": {
            "aggregate_usage": None,
            "interval": rng.choice(["month", "year"]),
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        }
        if recurring
        else None,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def _payment_intent_and_charge(
    rng: random.Random, customer: dict[str, Any], created: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    amount = rng.randrange(100, 50_000)
    currency = customer["currency"] or "usd"
    succeeded = rng.random() > 0.08
    pi_id, ch_id, pm_id = object_id("pi", rng, 24), object_id("ch", rng, 24), object_id("pm", rng, 24)
    intent = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": amount if succeeded else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{pi_id}_secret_{object_id('x', rng, 20)[2:]}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": currency,
        "customer": customer["id"],
        "description": None,
        "invoice": None,
        "last_payment_error": None
        if succeeded
        else {"code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card was declined."},
        "latest_charge": ch_id,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": pm_id,
        "payment_method_types": ["card"],
        "receipt_email": customer["email"],
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
    charge = {
        "id": ch_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": object_id("txn", rng, 24) if succeeded else None,
        "billing_details": {
            "address": customer["address"],
            "email": customer["email"],
            "name": customer["name"],
            "phone": customer["phone"],
        },
        "calculated_statement_descriptor": "CDP SANDBOX",
        "captured": succeeded,
        "created": created,
        "currency": currency,
        "customer": customer["id"],
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if succeeded else "card_declined",
        "failure_message": None if succeeded else "Your card was declined.",
        "fraud_details": {},
        "invoice": None,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": {
            "network_status": "approved_by_network" if succeeded else "declined_by_network",
            "reason": None if succeeded else "insufficient_funds",
            "risk_level": "normal",
            "risk_score": rng.randrange(0, 65),
            "seller_message": "Payment complete." if succeeded else "The bank returned the decline code.",
            "type": "authorized" if succeeded else "issuer_declined",
        },
        "paid": succeeded,
        "payment_intent": pi_id,
        "payment_method": pm_id,
        "payment_method_details": {
            "card": {
                "brand": rng.choice(["visa", "mastercard", "amex"]),
                "country": customer["address"]["country"],
                "exp_month": rng.randrange(1, 13),
                "exp_year": rng.randrange(2026, 2032),
                "funding": rng.choice(["credit", "debit"]),
                "last4": f"{rng.randrange(10**4):04d}",
                "network": "visa",
            },
            "type": "card",
        },
        "receipt_email": customer["email"],
        "receipt_number": None,
        "receipt_url": f"https://pay.stripe.com/receipts/{ch_id}",
        "refunded": False,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }
    return intent, charge


def _refund(rng: random.Random, charge: dict[str, Any], created: int) -> dict[str, Any]:
    amount = charge["amount"] if rng.random() < 0.7 else charge["amount"] // 2
    charge["amount_refunded"] = amount
    charge["refunded"] = amount == charge["amount"]
    return {
        "id": object_id("re", rng, 24),
        "object": "refund",
        "amount": amount,
        "balance_transaction": object_id("txn", rng, 24),
        "charge": charge["id"],
        "created": created,
        "currency": charge["currency"],
        "destination_details": {"card": {"reference_status": "available", "type": "refund"}, "type": "card"},
        "metadata": {},
        "payment_intent": charge["payment_intent"],
        "reason": rng.choice(["requested_by_customer", "duplicate", "fraudulent", None]),
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def _subscription_and_invoice(
    rng: random.Random, customer: dict[str, Any], price: dict[str, Any], created: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    sub_id, in_id = object_id("sub", rng, 24), object_id("in", rng, 24)
    period_end = created + (365 if (price["recurring"] or {}).get("interval") == "year" else 30) * 86_400
    canceled = rng.random() < 0.2
    status = "canceled" if canceled else rng.choice(["active", "active", "active", "trialing", "past_due"])
    item_price = copy.deepcopy(price)
    subscription = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": created,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": created + 86_400 if canceled else None,
        "cancellation_details": {
            "comment": None,
            "feedback": "too_expensive" if canceled else None,
            "reason": "cancellation_requested" if canceled else None,
        },
        "collection_method": "charge_automatically",
        "created": created,
        "currency": price["currency"],
        "current_period_end": period_end,
        "current_period_start": created,
        "customer": customer["id"],
        "days_until_due": None,
        "default_payment_method": object_id("pm", rng, 24),
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": created + 86_400 if canceled else None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": object_id("si", rng),
                    "object": "subscription_item",
                    "created": created,
                    "metadata": {},
                    "price": item_price,
                    "quantity": rng.choice([1, 1, 2, 5]),
                    "subscription": sub_id,
                    "tax_rates": [],
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": in_id,
        "livemode": False,
        "metadata": {},
        "pending_setup_intent": None,
        "pending_update": None,
        "start_date": created,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    amount = price["unit_amount"] * subscription["items"]["data"][0]["quantity"]
    paid = status != "past_due"
    invoice = {
        "id": in_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "CDP Sandbox, Inc.",
        "amount_due": amount,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": not paid,
        "billing_reason": "subscription_create",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": price["currency"],
        "customer": customer["id"],
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "description": None,
        "due_date": None,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{in_id}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/{in_id}/pdf",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": object_id("il", rng, 24),
                    "object": "line_item",
                    "amount": amount,
                    "currency": price["currency"],
                    "description": f"{subscription['items']['data'][0]['quantity']} x subscription",
                    "period": {"end": period_end, "start": created},
                    "price": item_price,
                    "quantity": subscription["items"]["data"][0]["quantity"],
                    "subscription": sub_id,
                    "type": "subscription",
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{in_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "number": f"{customer['invoice_prefix']}-0001",
        "paid": paid,
        "period_end": created,
        "period_start": created,
        "status": "paid" if paid else "open",
        "status_transitions": {
            "finalized_at": created,
            "marked_uncollectible_at": None,
            "paid_at": created + 60 if paid else None,
            "voided_at": None,
        },
        "subscription": sub_id,
        "subtotal": amount,
        "tax": None,
        "total": amount,
    }
    return subscription, invoice


def _event(
    rng: random.Random, type_: str, obj: dict[str, Any], created: int, previous: dict[str, Any] | None
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": object_id("evt", rng, 24),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": rng.choice([0, 0, 1]),
        "request": {"id": f"req_{object_id('r', rng)[2:]}", "idempotency_key": str(uuid.UUID(int=rng.getrandbits(128)))}
        if previous is not None
        else {"id": None, "idempotency_key": None},
        "type": type_,
    }


@dataclass
class StripeState:
    """The sandbox's objects per type, newest first, as Stripe lists them."""

    options: SandboxOptions
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: FaultPlan = field(init=False)  # from options; a test may swap it mid-run
    requests_seen: int = 0
    requests_by_path: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (api key, idempotency key) -> (saved at, (method, path, parameters), status, body)
    idempotent_answers: dict[tuple[str, str], tuple[float, tuple[str, str, Any], int, bytes]] = field(
        default_factory=dict
    )
    idempotency_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.options.faults.require_only("stripe", SUPPORTED_FAULTS)
        self.faults = self.options.faults
        rng = random.Random(self.options.seed)
        n = max(self.options.records, 1)
        people = population(self.options.seed)
        customers = [_customer(rng, people, i, FIRST_CREATED + i * 3600) for i in range(n)]
        products = [_product(rng, i, FIRST_CREATED + i * 3600 + 60) for i in range(max(n // 10, 3))]
        prices = []
        for product in products:
            one_time = _price(rng, product, product["created"] + 1, recurring=False)
            recurring = _price(rng, product, product["created"] + 2, recurring=True)
            product["default_price"] = recurring["id"]
            prices += [one_time, recurring]
        recurring_prices = [price for price in prices if price["recurring"]]
        intents, charges = [], []
        for i, customer in enumerate(customers):
            intent, charge = _payment_intent_and_charge(rng, customer, customer["created"] + 120 + i % 7)
            intents.append(intent)
            charges.append(charge)
        paid = [charge for charge in charges if charge["paid"]]
        refunds = [_refund(rng, charge, charge["created"] + 1800) for charge in paid[::10]][: max(n // 10, 1)]
        subscriptions, invoices = [], []
        for customer in customers[::2]:
            sub, inv = _subscription_and_invoice(rng, customer, rng.choice(recurring_prices), customer["created"] + 300)
            subscriptions.append(sub)
            invoices.append(inv)
        self.objects = {
            "customers": customers,
            "products": products,
            "prices": prices,
            "payment_intents": intents,
            "charges": charges,
            "refunds": refunds,
            "subscriptions": subscriptions,
            "invoices": invoices,
        }
        self.objects["events"] = self._recent_events(rng, n)
        for name, objects in self.objects.items():
            self.objects[name] = sorted(objects, key=lambda obj: obj["created"], reverse=True)
        self._rng = rng

    def _recent_events(self, rng: random.Random, n: int) -> list[dict[str, Any]]:
        """Changes of the last days, as Stripe records them: the newest object states plus what changed."""
        count = max(n // 2, 1)
        today = int(time.time()) // 86_400 * 86_400
        spacing = min(1800, (EVENT_RETENTION_SECONDS - 86_400) // count)
        events = []
        for k in range(count):
            created = today - (count - k) * spacing
            kind = k % 3
            if kind == 0:
                customer = self.objects["customers"][k % len(self.objects["customers"])]
                old_email = customer["email"]
                customer["email"] = old_email.replace("@", f"+{k}@")
                events.append(_event(rng, "customer.updated", customer, created, {"email": old_email}))
            elif kind == 1:
                charge = self.objects["charges"][k % len(self.objects["charges"])]
                events.append(
                    _event(rng, "charge.succeeded" if charge["paid"] else "charge.failed", charge, created, None)
                )
            else:
                invoice = self.objects["invoices"][k % len(self.objects["invoices"])]
                events.append(
                    _event(rng, f"invoice.{'paid' if invoice['paid'] else 'payment_failed'}", invoice, created, None)
                )
        return events

    @property
    def customers(self) -> list[dict[str, Any]]:
        return self.objects["customers"]

    def add_customer(self, fields: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            newest = self.customers[0]["created"] if self.customers else FIRST_CREATED
            customer = _customer(
                self._rng, population(self.options.seed), len(self.customers), max(int(time.time()), newest)
            )
            customer.update({key: value for key, value in fields.items() if key in CUSTOMER_FIELDS})
            customer["metadata"] = _merged_metadata({}, fields.get("metadata", {}))
            self.customers.insert(0, customer)
            self._add_event("customer.created", customer, None)
        return customer

    def update_customer(self, customer_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            customer = next((c for c in self.customers if c["id"] == customer_id), None)
            if customer is None:
                raise StripeError(404, f"No such customer: '{customer_id}'", code="resource_missing", param="id")
            changes = {key: value for key, value in fields.items() if key in CUSTOMER_FIELDS}
            if "metadata" in fields:
                changes["metadata"] = _merged_metadata(customer["metadata"], fields["metadata"])
            previous = {key: customer[key] for key in changes if customer[key] != changes[key]}
            customer.update(changes)
            if previous:
                self._add_event("customer.updated", customer, previous)
        return customer

    def idempotent(
        self, api_key: str, key: str, request: tuple[str, str, Any], run: Callable[[], dict[str, Any]]
    ) -> tuple[int, bytes, bool]:
        """Stripe's idempotency (API v1): the first answer to ``key`` (status and body, errors included) is saved for
        24 hours and replayed to retries with the same method, path and parameters; reuse with other ones is 400
        ``idempotency_error``. Returns (status, body, replayed)."""
        if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise StripeError(
                400, f"Idempotency-Key is too long: at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters", param="key"
            )
        now = time.monotonic()
        with self.idempotency_lock:  # one request per key at a time, as Stripe serialises them
            self.idempotent_answers = {
                saved: answer
                for saved, answer in self.idempotent_answers.items()
                if now - answer[0] < IDEMPOTENCY_KEY_SECONDS
            }
            saved = self.idempotent_answers.get((api_key, key))
            if saved is not None:
                _, first_request, status, body = saved
                if first_request != request:
                    raise StripeError(
                        400,
                        f"Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{key}' if you meant to execute a different request.",
                        type_="idempotency_error",
                    )
                return status, body, True
            try:
                status, body = 200, orjson.dumps(run())
            except StripeError as error:
                status, body = error.status, bytes(error.response().body)
            self.idempotent_answers[(api_key, key)] = (now, request, status, body)
            return status, body, False

    def _add_event(self, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None) -> None:
        newest = self.objects["events"][0]["created"] if self.objects["events"] else 0
        self.objects["events"].insert(0, _event(self._rng, type_, obj, max(int(time.time()), newest), previous))


def _merged_metadata(current: dict[str, str], changes: Any) -> dict[str, str]:
    """Stripe's metadata update: keys set, and a key set to an empty string removed."""
    merged = {**current, **changes}
    return {key: value for key, value in merged.items() if value != ""}


# -- protocol -----------------------------------------------------------------------------------------------------


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


def _fault_for(state: StripeState, path: str) -> Fault | None:
    """The fault (if any) this request to ``path`` gets, from the per-path request count."""
    with state.lock:
        state.requests_seen += 1
        state.requests_by_path[path] += 1
        count = state.requests_by_path[path]
    return state.faults.resource_fault([path]) or state.faults.counted_fault(count, path)


def _int_param(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise StripeError(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name) from None


def _unknown(name: str) -> StripeError:
    return StripeError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


_PARAM_KEY = re.compile(r"^([a-z_]+)((?:\[[^\[\]]*\])*)$")


def decode_params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding as values: ``a=1`` a string, ``a[]=x`` and ``a[0]=x`` (the official clients' arrays)
    lists, ``a[b]=x`` a dictionary. Deeper nesting is not a parameter of any list this sandbox serves."""
    params: dict[str, Any] = {}
    indexed: dict[str, dict[int, str]] = {}
    for key, value in pairs:
        match = _PARAM_KEY.match(key)
        if match is None:
            raise _unknown(key)
        name, brackets = match.group(1), re.findall(r"\[([^\]]*)\]", match.group(2))
        if not brackets:
            params[name] = value
        elif len(brackets) > 1:
            raise _unknown(key)
        elif brackets[0] == "":
            params.setdefault(name, [])
            if not isinstance(params[name], list):
                raise StripeError(400, f"Invalid array: {name}", code="parameter_invalid_array", param=name)
            params[name].append(value)
        elif brackets[0].isdigit():
            indexed.setdefault(name, {})[int(brackets[0])] = value
            params[name] = [indexed[name][index] for index in sorted(indexed[name])]
        else:
            entry = params.setdefault(name, {})
            if not isinstance(entry, dict):
                raise _unknown(key)
            entry[brackets[0]] = value
    return params


Predicate = Callable[[dict[str, Any]], bool]
#: Builds the predicate of one list parameter from its decoded value (raising StripeError for a bad value).
Filter = Callable[[str, Any], Predicate]


def _field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _scalar(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {name} must be a string", param=name)
    return value


def equals(path: str) -> Filter:
    """Objects whose ``path`` is the given string."""

    def build(name: str, value: Any) -> Predicate:
        wanted = _scalar(name, value)
        return lambda obj: _field(obj, path) == wanted

    return build


def one_of(path: str, allowed: tuple[str, ...]) -> Filter:
    """``equals``, for a parameter whose values Stripe enumerates (others: 400 ``parameter_invalid_string``)."""

    def build(name: str, value: Any) -> Predicate:
        wanted = _scalar(name, value)
        if wanted not in allowed:
            message = f"Invalid {name}: must be one of {', '.join(allowed)}"
            raise StripeError(400, message, code="parameter_invalid_string", param=name)
        return lambda obj: _field(obj, path) == wanted

    return build


def boolean(path: str) -> Filter:
    def build(name: str, value: Any) -> Predicate:
        text = _scalar(name, value)
        if text not in ("true", "false"):
            raise StripeError(400, f"Invalid boolean: {text}", code="parameter_invalid_boolean", param=name)
        wanted = text == "true"
        return lambda obj: bool(_field(obj, path)) is wanted

    return build


def any_of(path: str, max_items: int = 100) -> Filter:
    """An array parameter (``ids``, ``lookup_keys``, ``types``): objects whose ``path`` is one of its items."""

    def build(name: str, value: Any) -> Predicate:
        if not isinstance(value, list):
            raise StripeError(
                400, f"Invalid array: {name} must be an array", code="parameter_invalid_array", param=name
            )
        if len(value) > max_items:
            raise StripeError(400, f"Invalid array: {name} takes at most {max_items} items", param=name)
        wanted = set(value)
        return lambda obj: _field(obj, path) in wanted

    return build


_RANGE_CHECKS: dict[str, Callable[[int, int], bool]] = {
    "gt": int.__gt__,
    "gte": int.__ge__,
    "lt": int.__lt__,
    "lte": int.__le__,
}


def time_range(path: str) -> Filter:
    """A timestamp parameter: an exact Unix time, or ``name[gt|gte|lt|lte]`` bounds."""

    def build(name: str, value: Any) -> Predicate:
        if isinstance(value, str):
            exact = _int_param(name, value)
            return lambda obj: _field(obj, path) == exact
        if not isinstance(value, dict):
            raise StripeError(400, f"Invalid {name}: an integer or a hash of gt, gte, lt, lte", param=name)
        bounds = []
        for operator, raw in value.items():
            if operator not in _RANGE_CHECKS:
                raise _unknown(f"{name}[{operator}]")
            bounds.append((_RANGE_CHECKS[operator], _int_param(f"{name}[{operator}]", raw)))
        return lambda obj: (
            isinstance(_field(obj, path), int) and all(check(_field(obj, path), bound) for check, bound in bounds)
        )

    return build


def nested(**filters: Filter) -> Filter:
    """A hash parameter (``recurring[interval]``, ``automatic_tax[enabled]``): each key is a filter of its own."""

    def build(name: str, value: Any) -> Predicate:
        if not isinstance(value, dict):
            raise StripeError(400, f"Invalid hash: {name}", code="parameter_invalid_hash", param=name)
        predicates = []
        for key, item in value.items():
            if key not in filters:
                raise _unknown(f"{name}[{key}]")
            predicates.append(filters[key](f"{name}[{key}]", item))
        return lambda obj: all(predicate(obj) for predicate in predicates)

    return build


def any_item_price(name: str, value: Any) -> Predicate:
    """Subscriptions with an item on this price (``price``; ``plan`` too: a recurring price serves as a plan)."""
    wanted = _scalar(name, value)
    return lambda obj: any(item["price"]["id"] == wanted for item in obj["items"]["data"])


def event_type(name: str, value: Any) -> Predicate:
    """``type``: an event type, ``*`` a wildcard (``customer.*``)."""
    pattern = _scalar(name, value)
    return lambda obj: fnmatch.fnmatchcase(obj["type"], pattern)


def delivered(name: str, value: Any) -> Predicate:
    """``delivery_success``: events whose webhooks were all delivered (true) or still pending (false)."""
    wanted = boolean("pending_webhooks")(name, value)
    return lambda obj: not wanted(obj)  # delivered: no pending webhooks


SUBSCRIPTION_STATUSES = (
    "active",
    "all",
    "canceled",
    "ended",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
)


def subscription_status(name: str, value: Any) -> Predicate:
    status = one_of("status", SUBSCRIPTION_STATUSES)(name, value)
    wanted = _scalar(name, value)
    if wanted == "all":
        return lambda obj: True
    if wanted == "ended":
        return lambda obj: obj["status"] in ("canceled", "incomplete_expired")
    return status


COLLECTION_METHODS = ("charge_automatically", "send_invoice")
# Every parameter of every list (Stripe's API reference, 2024-06-20), besides limit, starting_after and ending_before:
# each is filtered as Stripe filters it. Anything else, expand[] included (the sandbox never expands), is answered
# 400 parameter_unknown, so no parameter is accepted and then ignored.
LIST_PARAMETERS: dict[str, dict[str, Filter]] = {
    "customers": {"created": time_range("created"), "email": equals("email"), "test_clock": equals("test_clock")},
    "charges": {
        "created": time_range("created"),
        "customer": equals("customer"),
        "payment_intent": equals("payment_intent"),
        "transfer_group": equals("transfer_group"),
    },
    "invoices": {
        "created": time_range("created"),
        "customer": equals("customer"),
        "status": one_of("status", ("draft", "open", "paid", "uncollectible", "void")),
        "subscription": equals("subscription"),
        "collection_method": one_of("collection_method", COLLECTION_METHODS),
        "due_date": time_range("due_date"),
    },
    "subscriptions": {
        "created": time_range("created"),
        "customer": equals("customer"),
        "price": any_item_price,
        "plan": any_item_price,
        "status": subscription_status,
        "collection_method": one_of("collection_method", COLLECTION_METHODS),
        "current_period_end": time_range("current_period_end"),
        "current_period_start": time_range("current_period_start"),
        "automatic_tax": nested(enabled=boolean("automatic_tax.enabled")),
        "test_clock": equals("test_clock"),
    },
    "payment_intents": {"created": time_range("created"), "customer": equals("customer")},
    "products": {
        "created": time_range("created"),
        "active": boolean("active"),
        "ids": any_of("id"),
        "shippable": boolean("shippable"),
        "url": equals("url"),
    },
    "prices": {
        "created": time_range("created"),
        "active": boolean("active"),
        "currency": equals("currency"),
        "product": equals("product"),
        "type": one_of("type", ("one_time", "recurring")),
        "lookup_keys": any_of("lookup_key", max_items=10),
        "recurring": nested(
            interval=one_of("recurring.interval", ("day", "week", "month", "year")),
            usage_type=one_of("recurring.usage_type", ("licensed", "metered")),
            meter=equals("recurring.meter"),
        ),
    },
    "refunds": {
        "created": time_range("created"),
        "charge": equals("charge"),
        "payment_intent": equals("payment_intent"),
    },
    "events": {
        "created": time_range("created"),
        "type": event_type,
        "types": any_of("type", max_items=20),
        "delivery_success": delivered,
    },
}
PAGINATION_PARAMS = ("limit", "starting_after", "ending_before")


def _list_filters(resource: str, params: dict[str, Any], now: int) -> list[Predicate]:
    """One predicate per given parameter of ``resource``'s list (unknown ones: 400), plus Stripe's implicit ones."""
    allowed = LIST_PARAMETERS[resource]
    predicates = []
    for name, value in params.items():
        if name in PAGINATION_PARAMS:
            if not isinstance(value, str):
                raise StripeError(400, f"Invalid {name}: must be a string", param=name)
            continue
        if name not in allowed:
            raise _unknown(name if isinstance(value, str) else f"{name}[]")
        predicates.append(allowed[name](name, value))
    if resource == "subscriptions" and "status" not in params:
        predicates.append(lambda obj: obj["status"] != "canceled")  # Stripe leaves canceled ones out by default
    if resource == "events":
        if "type" in params and "types" in params:
            raise StripeError(400, "You may pass either `type` or `types`, but not both.", param="types")
        predicates.append(lambda obj: obj["created"] >= now - EVENT_RETENTION_SECONDS)
    return predicates


def _list_page(resource: str, request: Request, objects: list[dict[str, Any]]) -> dict[str, Any]:
    params = decode_params(request.query_params.multi_items())
    predicates = _list_filters(resource, params, int(time.time()))
    limit = _int_param("limit", params.get("limit", "10"))
    if not 1 <= limit <= 100:
        raise StripeError(
            400, "Invalid limit: must be between 1 and 100", code="parameter_invalid_integer", param="limit"
        )
    if "starting_after" in params and "ending_before" in params:
        raise StripeError(400, "You may only specify one of these parameters: ending_before, starting_after.")
    matching = [obj for obj in objects if all(predicate(obj) for predicate in predicates)]
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
    return {"object": "list", "url": f"/v1/{resource}", "has_more": has_more, "data": page}


def _customer_fields(form: list[tuple[str, str]]) -> dict[str, Any]:
    """The body of ``POST /v1/customers[/{id}]``: the fields the sandbox stores; anything else is 400."""
    decoded = decode_params(form)
    for name, value in decoded.items():
        if name == "metadata" and isinstance(value, dict):
            continue
        if name not in CUSTOMER_FIELDS or not isinstance(value, str):
            raise _unknown(name)
    return decoded


def create_sandbox(options: SandboxOptions | None = None) -> Starlette:
    """The Stripe sandbox as an ASGI app (``app.state.stripe`` is its :class:`StripeState`)."""
    state = StripeState(options or SandboxOptions())

    async def handle(request: Request) -> Response:
        request_id = f"req_{uuid.uuid4().hex[:14]}"
        resource = request.path_params["resource"]
        object_id_ = request.path_params.get("object_id")
        try:
            if resource not in OBJECT_TYPES:
                raise StripeError(404, f"Unrecognized request URL (GET: /v1/{resource}).")
            _check_auth(request, state)
            fault = _fault_for(state, request.url.path)
            if fault is Fault.RATE_LIMIT:
                raise StripeError(
                    429,
                    "Too many requests hit the API too quickly. Please retry with exponential backoff.",
                    code="rate_limit",
                )
            if fault in (Fault.SERVER_ERROR, Fault.FAILING):
                status = state.faults.server_error_status or 500
                raise StripeError(status, "An unknown error occurred.", type_="api_error")
            if fault is Fault.OUTAGE:
                raise StripeError(503, "Stripe is temporarily unavailable; retry later.", type_="api_error")
            if fault is Fault.SLOW:
                await asyncio.sleep(state.faults.slow_seconds)
            status, headers = 200, {}
            if request.method == "POST":
                if resource != "customers":
                    raise StripeError(404, f"Unrecognized request URL (POST: /v1/{resource}).")
                fields = _customer_fields(parse_qsl((await request.body()).decode(), keep_blank_values=True))

                def write() -> dict[str, Any]:
                    return state.update_customer(object_id_, fields) if object_id_ else state.add_customer(fields)

                idempotency_key = request.headers.get("idempotency-key")
                if idempotency_key is None:
                    payload = orjson.dumps(write())
                else:
                    api_key = _authorised_key(request) or ""
                    signature = ("POST", request.url.path, fields)
                    status, payload, replayed = state.idempotent(api_key, idempotency_key, signature, write)
                    headers["Idempotency-Key"] = idempotency_key
                    if replayed:
                        headers["Idempotent-Replayed"] = "true"
            else:
                with state.lock:
                    snapshot = list(state.objects[resource])
                if object_id_:
                    found = next((obj for obj in snapshot if obj["id"] == object_id_), None)
                    if found is None:
                        raise StripeError(404, f"No such object: '{object_id_}'", code="resource_missing", param="id")
                    payload = orjson.dumps(found)
                else:
                    payload = orjson.dumps(_list_page(resource, request, snapshot))
            if fault is Fault.MALFORMED:
                payload = payload[: max(len(payload) // 2, 1)]
            response: Response = Response(payload, status_code=status, media_type="application/json", headers=headers)
        except StripeError as error:
            response = error.response()
        response.headers["Request-Id"] = request_id
        return response

    app = Starlette(
        routes=[
            Route("/v1/{resource}", handle, methods=["GET", "POST"]),
            Route("/v1/{resource}/{object_id}", handle, methods=["GET", "POST"]),
        ]
    )
    app.state.stripe = state
    return app
