"""Stripe streams: one small class per object type (``GET /v1/<name>``; schemas in ``schemas/<name>.json``)."""

from __future__ import annotations

from typing import ClassVar

from taps.stripe.client import DAY, StripeStream


class CustomersStream(StripeStream):
    """Customers (deleted customers are not listed)."""

    name = "customers"
    path = "/v1/customers"


class ChargesStream(StripeStream):
    """Charges; ``customer``, ``payment_intent``, ``invoice`` and ``balance_transaction`` stay ids."""

    name = "charges"
    path = "/v1/charges"


class InvoicesStream(StripeStream):
    """Invoices of every status, with their first page of line items inline as Stripe returns them."""

    name = "invoices"
    path = "/v1/invoices"


class SubscriptionsStream(StripeStream):
    """Subscriptions, canceled ones included (Stripe leaves them out unless ``status=all``)."""

    name = "subscriptions"
    path = "/v1/subscriptions"
    list_params: ClassVar[dict[str, str]] = {"status": "all"}


class PaymentIntentsStream(StripeStream):
    """Payment intents; ``latest_charge`` and ``payment_method`` stay ids."""

    name = "payment_intents"
    path = "/v1/payment_intents"


class ProductsStream(StripeStream):
    """Products, active and archived."""

    name = "products"
    path = "/v1/products"


class PricesStream(StripeStream):
    """Prices, active and archived; ``product`` stays an id."""

    name = "prices"
    path = "/v1/prices"


class RefundsStream(StripeStream):
    """Refunds; ``charge`` and ``payment_intent`` stay ids."""

    name = "refunds"
    path = "/v1/refunds"


class EventsStream(StripeStream):
    """Events of the last 30 days (all Stripe keeps): how updates to objects already extracted are caught."""

    name = "events"
    path = "/v1/events"
    retention_seconds: ClassVar[int | None] = 30 * DAY


STREAM_TYPES: list[type[StripeStream]] = [
    CustomersStream,
    ChargesStream,
    InvoicesStream,
    SubscriptionsStream,
    PaymentIntentsStream,
    ProductsStream,
    PricesStream,
    RefundsStream,
    EventsStream,
]
