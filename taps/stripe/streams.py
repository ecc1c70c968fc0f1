"""Stripe streams: one small class per object type."""

from __future__ import annotations

from taps.stripe.client import StripeStream


class CustomersStream(StripeStream):
    """Stripe customers (``GET /v1/customers``)."""

    name = "customers"
    path = "/v1/customers"
    primary_keys = ("id",)


STREAM_TYPES: list[type[StripeStream]] = [CustomersStream]
