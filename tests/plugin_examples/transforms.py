"""Transform functions over plain lists of rows (the hook tests need no Spark): inputs by name, one output."""

from __future__ import annotations

from typing import Any

Rows = list[dict[str, Any]]


def customers(contacts: Rows) -> Rows:
    return [{"customer_id": row["id"], "email": row["email"].strip().lower()} for row in contacts]


def orders(orders: Rows) -> Rows:
    return [{"order_id": row["id"], "customer_id": row["contact_id"], "amount": row["amount"]} for row in orders]


def customer_totals(shop_customers: Rows, shop_orders: Rows) -> Rows:
    totals = {row["customer_id"]: 0 for row in shop_customers}
    for order in shop_orders:
        totals[order["customer_id"]] = totals.get(order["customer_id"], 0) + order["amount"]
    return [{"customer_id": key, "total": value} for key, value in sorted(totals.items())]
