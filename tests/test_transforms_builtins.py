"""The built-in transforms on real Spark over raw batches written by the real target-s3raw with the taps' schemas:
orders, products, events, customer metrics, consent (most recent wins), erasure, and quality rules into the DLQ."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from plugins.cli.app import main
from plugins.core.storage import ObjectStore
from plugins.descriptors import RawInput, TransformDescriptor
from plugins.transforms.catalog import ProcessedZone
from plugins.transforms.consent import (
    event_statements,
    latest_consent,
    salesforce_statements,
    shopify_statements,
)
from plugins.transforms.erasure import Tombstone, add_tombstones, drop_erased, erasure_table, read_tombstones
from plugins.transforms.frames import TransformInputError
from plugins.transforms.normalize import reason_column
from plugins.transforms.quality import (
    ROW_COLUMN,
    RULE_COLUMN,
    RULE_COLUMN_NAME,
    Allowed,
    Format,
    QualityRuleError,
    Range,
    Required,
    reason_counts,
    split_by_rules,
    write_rejected,
)
from plugins.transforms.raw_reader import list_raw_files, read_raw
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN, subject_struct
from schema_registry import SchemaRegistry
from tests.s3raw_support import record_message, run_target, schema_message, zone_config
from transforms.customer_metrics.transform import OUTPUT_COLUMNS as METRIC_COLUMNS
from transforms.customer_metrics.transform import customer_metrics
from transforms.events.transform import OUTPUT_COLUMNS as EVENT_COLUMNS
from transforms.events.transform import events
from transforms.orders.transform import OUTPUT_COLUMNS as ORDER_COLUMNS
from transforms.orders.transform import orders
from transforms.products.transform import OUTPUT_COLUMNS as PRODUCT_COLUMNS
from transforms.products.transform import products

REPO = Path(__file__).resolve().parent.parent
SALESFORCE_OPPORTUNITY: dict[str, Any] = {  # As tap-salesforce's describe_schema builds it.
    "type": "object",
    "properties": {
        "Id": {"type": "string"},
        "AccountId": {"type": ["string", "null"]},
        "StageName": {"type": ["string", "null"]},
        "Amount": {"type": ["number", "null"]},
        "CloseDate": {"type": ["string", "null"], "format": "date"},
        "IsWon": {"type": ["boolean", "null"]},
        "SystemModstamp": {"type": ["string", "null"], "format": "date-time"},
    },
}
SALESFORCE_CONTACT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Id": {"type": "string"},
        "Email": {"type": ["string", "null"]},
        "HasOptedOutOfEmail": {"type": ["boolean", "null"]},
        "DoNotCall": {"type": ["boolean", "null"]},
        "SystemModstamp": {"type": ["string", "null"], "format": "date-time"},
    },
}
WEBHOOK_EVENT: dict[str, Any] = {  # tap-webhooks' event_schema().
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "_webhook_event_id": {"type": "string"},
        "_webhook_topic": {"type": "string"},
        "_webhook_received_at": {"type": "string", "format": "date-time"},
        "_webhook_log_position": {"type": "string"},
    },
}


def tap_schema(provider: str, stream: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REPO / "taps" / provider / "schemas" / f"{stream}.json").read_text())
    return schema


class RawZone:
    """Raw batches landed by the real target under one folder, read back with the registry's schemas."""

    def __init__(self, spark: Any, base: Path) -> None:
        self.spark = spark
        self.base = str(base)

    def land(
        self, provider: str, stream: str, schema: dict[str, Any], records: list[dict[str, Any]], key: str = "id"
    ) -> None:
        config = zone_config(self.base, provider=provider)
        messages = [schema_message(stream, schema, [key]), *[record_message(stream, r) for r in records]]
        run_target(config, messages)

    def read(self, provider: str, stream: str) -> Any:
        raw = ObjectStore(f"{self.base}/raw")
        registry = SchemaRegistry(ObjectStore(f"{self.base}/registry"))
        keys = [f.key for f in list_raw_files(raw, "acme", provider, stream)]
        return read_raw(self.spark, raw, keys, subject_struct(registry, "acme", provider, stream))


@pytest.fixture
def zone(spark, tmp_path) -> RawZone:
    return RawZone(spark, tmp_path)


@pytest.fixture(scope="module")
def orders_zone(spark, tmp_path_factory) -> RawZone:
    """The orders' raw batches, landed once for the tests that only read them."""
    zone = RawZone(spark, tmp_path_factory.mktemp("orders"))
    land_orders(zone)
    return zone


def money(shop: str, code: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": shop, "currencyCode": code}}


def shopify_order(number: int, updated: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/Order/{number}",
        "email": " Ada@Example.COM ",
        "customer": {"id": "gid://shopify/Customer/7"},
        "createdAt": "2026-01-05T10:00:00+01:00",
        "processedAt": "2026-01-05T10:00:00+01:00",
        "updatedAt": updated,
        "displayFinancialStatus": "PAID",
        "totalPriceSet": money("12.50", "EUR"),
        **extra,
    }


def stripe_charge(charge_id: str, amount: int, currency: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "currency": currency,
        "customer": "cus_1",
        "created": 1767323045,  # 2026-01-02T03:04:05Z
        "status": "succeeded",
        "billing_details": {"email": "bob@example.com"},
        **extra,
    }


def land_orders(zone: RawZone) -> None:
    zone.land("shopify", "orders", tap_schema("shopify", "orders"), [shopify_order(1, "2026-01-05T10:00:00Z")])
    # A later extraction of the same order: refunded in full. The latest version wins.
    zone.land(
        "shopify",
        "orders",
        tap_schema("shopify", "orders"),
        [
            shopify_order(1, "2026-01-06T10:00:00Z", displayFinancialStatus="REFUNDED"),
            shopify_order(2, "2026-01-07T10:00:00Z", email="not-an-email", customer=None),
        ],
    )
    zone.land(
        "stripe",
        "charges",
        tap_schema("stripe", "charges"),
        [
            stripe_charge("ch_usd", 1999, "usd", amount_refunded=500),
            stripe_charge("ch_jpy", 5000, "jpy"),
            stripe_charge("ch_kwd", 1500, "kwd"),
            stripe_charge("ch_failed", 700, "usd", status="failed", amount_captured=0),
        ],
    )
    zone.land(
        "stripe",
        "invoices",
        tap_schema("stripe", "invoices"),
        [{"id": "in_1", "object": "invoice", "amount_paid": 1999, "currency": "usd", "customer": "cus_1",
          "customer_email": "BOB@example.com", "created": 1767323045, "status": "paid"}],
    )  # fmt: skip
    zone.land(
        "salesforce",
        "Opportunity",
        SALESFORCE_OPPORTUNITY,
        [{"Id": "006A", "AccountId": "001A", "StageName": "Closed Won", "Amount": 1200.5, "CloseDate": "2026-01-03",
          "IsWon": True, "SystemModstamp": "2026-01-04T00:00:00.000Z"}],
        key="Id",
    )  # fmt: skip


def read_orders(zone: RawZone) -> Any:
    return orders(
        shopify_orders=zone.read("shopify", "orders"),
        stripe_charges=zone.read("stripe", "charges"),
        stripe_invoices=zone.read("stripe", "invoices"),
        salesforce_opportunity=zone.read("salesforce", "Opportunity"),
    )


def test_orders_from_every_source_with_money_in_major_units_and_the_latest_version(orders_zone) -> None:
    frame = read_orders(orders_zone)
    rows = {row["order_id"]: row.asDict() for row in frame.collect()}

    assert [name for name in frame.columns if not name.startswith("_cdp_")] == list(ORDER_COLUMNS)

    assert set(rows) == {
        "shopify:order:gid://shopify/Order/1",
        "shopify:order:gid://shopify/Order/2",
        "stripe:charge:ch_usd",
        "stripe:charge:ch_jpy",
        "stripe:charge:ch_kwd",
        "stripe:charge:ch_failed",
        "stripe:invoice:in_1",
        "salesforce:opportunity:006A",
    }
    shop = rows["shopify:order:gid://shopify/Order/1"]
    assert shop["status"] == "REFUNDED"  # The later version won.
    assert shop["is_revenue"] is False
    assert shop["amount"] == Decimal("12.5")
    assert shop["currency"] == "EUR"
    assert shop["email"] == "ada@example.com"
    assert (shop["customer_id_type"], shop["customer_id_value"]) == ("shopify_customer", "gid://shopify/Customer/7")
    assert shop["ordered_at"] == datetime(2026, 1, 5, 9, 0)  # UTC
    assert shop["updated_at"] == datetime(2026, 1, 6, 10, 0)
    assert shop[SOURCE_FILE_COLUMN].startswith("acme/shopify/")
    no_customer = rows["shopify:order:gid://shopify/Order/2"]
    assert no_customer["email"] is None
    assert no_customer[reason_column("email")].startswith("invalid email")
    assert no_customer["customer_id_type"] is None
    assert no_customer["is_revenue"] is True
    usd = rows["stripe:charge:ch_usd"]
    assert (usd["amount"], usd["refunded_amount"], usd["currency"]) == (Decimal("19.99"), Decimal("5"), "USD")
    assert usd["is_revenue"] is True
    assert usd["ordered_at"] == datetime(2026, 1, 2, 3, 4, 5)
    assert (usd["customer_id_type"], usd["customer_id_value"], usd["email"]) == (
        "stripe_customer",
        "cus_1",
        "bob@example.com",
    )
    assert rows["stripe:charge:ch_jpy"]["amount"] == Decimal("5000")  # JPY has no minor unit.
    assert rows["stripe:charge:ch_kwd"]["amount"] == Decimal("1.5")  # KWD has three decimals.
    assert rows["stripe:charge:ch_failed"]["is_revenue"] is False
    invoice = rows["stripe:invoice:in_1"]
    assert invoice["is_revenue"] is False  # Its charge counts, not it.
    assert invoice["amount"] == Decimal("19.99")
    opportunity = rows["salesforce:opportunity:006A"]
    assert opportunity["amount"] == Decimal("1200.5")
    assert opportunity["is_revenue"] is True
    assert opportunity["ordered_at"] == datetime(2026, 1, 3)
    assert opportunity["currency"] is None
    assert opportunity["customer_id_type"] == "salesforce_account"


def test_products_and_prices_with_prices_in_major_units(zone) -> None:
    zone.land(
        "shopify",
        "products",
        tap_schema("shopify", "products"),
        [{"id": "gid://shopify/Product/1", "title": "Cafe\u0301 mug", "status": "ACTIVE",
          "updatedAt": "2026-01-02T00:00:00Z", "variants": [{"price": "19.99"}, {"price": "9.50"}]}],
    )  # fmt: skip
    zone.land(
        "stripe",
        "products",
        tap_schema("stripe", "products"),
        [{"id": "prod_1", "object": "product", "name": "Pro plan", "active": True, "created": 1767323045}],
    )
    zone.land(
        "stripe",
        "prices",
        tap_schema("stripe", "prices"),
        [
            {"id": "price_jpy", "object": "price", "product": "prod_1", "currency": "jpy", "unit_amount": 1200,
             "active": True, "created": 1767323045},
            {"id": "price_usd", "object": "price", "product": "prod_1", "currency": "usd", "unit_amount": 2900,
             "nickname": "Monthly", "active": False, "created": 1767323045},
        ],
    )  # fmt: skip

    frame = products(
        shopify_products=zone.read("shopify", "products"),
        stripe_products=zone.read("stripe", "products"),
        stripe_prices=zone.read("stripe", "prices"),
    )
    rows = {row["product_id"]: row.asDict() for row in frame.collect()}

    assert [name for name in frame.columns if not name.startswith("_cdp_")] == list(PRODUCT_COLUMNS)

    shop = rows["shopify:product:gid://shopify/Product/1"]
    assert (shop["name"], shop["unit_price"], shop["active"]) == ("Café mug", Decimal("9.5"), True)
    assert rows["stripe:product:prod_1"]["created_at"] == datetime(2026, 1, 2, 3, 4, 5)
    jpy = rows["stripe:price:price_jpy"]
    assert (jpy["kind"], jpy["parent_id"], jpy["unit_price"], jpy["currency"]) == (
        "price",
        "stripe:product:prod_1",
        Decimal("1200"),
        "JPY",
    )
    usd = rows["stripe:price:price_usd"]
    assert (usd["name"], usd["unit_price"], usd["active"]) == ("Monthly", Decimal("29"), False)


def land_events(zone: RawZone) -> None:
    charge = {"id": "ch_usd", "object": "charge", "customer": "cus_1", "receipt_email": "Bob@Example.com"}
    zone.land(
        "stripe",
        "events",
        tap_schema("stripe", "events"),
        [
            {"id": "evt_1", "object": "event", "type": "charge.succeeded", "created": 1767323045,
             "data": {"object": charge}},
            {"id": "evt_2", "object": "event", "type": "customer.updated", "created": 1767409445,
             "data": {"object": {"id": "cus_1", "object": "customer", "email": "bob@example.com"}}},
        ],
    )  # fmt: skip
    zone.land(  # The webhook delivered evt_1 too, and Shopify sent an order webhook.
        "stripe",
        "webhook_events",
        WEBHOOK_EVENT,
        [{"_webhook_event_id": "evt_1", "_webhook_topic": "charge.succeeded",
          "_webhook_received_at": "2026-01-02T03:04:06Z", "_webhook_log_position": "1", "id": "evt_1"}],
        key="_webhook_event_id",
    )  # fmt: skip
    zone.land(
        "shopify",
        "webhook_orders",
        WEBHOOK_EVENT,
        [{"_webhook_event_id": "wh_9", "_webhook_topic": "orders/create",
          "_webhook_received_at": "2026-01-03T00:00:00+01:00", "_webhook_log_position": "7"}],
        key="_webhook_event_id",
    )  # fmt: skip


def test_events_from_the_api_and_webhooks_once_each(zone) -> None:
    land_events(zone)

    frame = events(
        stripe_events=zone.read("stripe", "events"),
        stripe_webhook_events=zone.read("stripe", "webhook_events"),
        shopify_webhook_orders=zone.read("shopify", "webhook_orders"),
        salesforce_webhook_contact=None,  # A subject with nothing landed yet.
    )
    rows = {row["event_id"]: row.asDict() for row in frame.collect()}

    assert [name for name in frame.columns if not name.startswith("_cdp_")] == list(EVENT_COLUMNS)

    assert set(rows) == {"stripe:evt_1", "stripe:evt_2", "shopify:wh_9"}
    first = rows["stripe:evt_1"]
    assert first["channel"] == "api"  # The API's copy, with its payload, wins over the webhook's.
    assert (first["type"], first["object_type"], first["object_id"]) == ("charge.succeeded", "charge", "ch_usd")
    assert (first["customer_id_type"], first["customer_id_value"]) == ("stripe_customer", "cus_1")
    assert first["email"] == "bob@example.com"
    assert first["occurred_at"] == datetime(2026, 1, 2, 3, 4, 5)
    assert json.loads(first["payload"])["id"] == "ch_usd"
    assert rows["stripe:evt_2"]["customer_id_value"] == "cus_1"  # A customer object is its own customer.
    hook = rows["shopify:wh_9"]
    assert (hook["channel"], hook["type"], hook["object_type"]) == ("webhook", "orders/create", "orders")
    assert hook["occurred_at"] == datetime(2026, 1, 2, 23, 0)


def test_an_input_named_unlike_a_webhook_stream_is_refused() -> None:
    with pytest.raises(TransformInputError, match="<provider>_webhook_<stream>"):
        events(stripe_charges=None)


def test_customer_metrics_per_unified_customer_and_currency(spark) -> None:
    orders_table = spark.createDataFrame(
        [
            ("stripe_customer", "cus_1", "bob@example.com", Decimal("19.99"), Decimal("5"), "USD", True,
             datetime(2026, 1, 2)),
            ("shopify_customer", "gid://shopify/Customer/7", None, Decimal("30.01"), None, "USD", True,
             datetime(2026, 1, 20)),
            ("email", "bob@example.com", "bob@example.com", Decimal("5000"), None, "JPY", True, datetime(2026, 1, 10)),
            ("stripe_customer", "cus_1", None, Decimal("99"), None, "USD", False, datetime(2026, 1, 25)),
            ("stripe_customer", "cus_9", None, Decimal("10"), None, "USD", True, datetime(2025, 12, 31)),
        ],
        "customer_id_type string, customer_id_value string, email string, amount decimal(38,9), "
        "refunded_amount decimal(38,9), currency string, is_revenue boolean, ordered_at timestamp",
    )  # fmt: skip
    events_table = spark.createDataFrame(
        [
            ("stripe_customer", "cus_1", None, datetime(2026, 1, 31)),  # Today: weight 1.
            ("stripe_customer", "cus_1", None, datetime(2026, 1, 1)),  # 30 days ago: weight 0.5.
            ("stripe_customer", "cus_1", None, datetime(2025, 9, 1)),  # Outside the 90 days.
            (None, None, "eve@example.com", datetime(2026, 1, 30)),
        ],
        "customer_id_type string, customer_id_value string, email string, occurred_at timestamp",
    )
    identity_map = spark.createDataFrame(
        [
            ("stripe_customer", "cus_1", "cust_A"),
            ("shopify_customer", "gid://shopify/Customer/7", "cust_A"),
            ("email", "bob@example.com", "cust_A"),
            ("email", "eve@example.com", "cust_E"),
        ],
        "id_type string, id_value string, customer_id string",
    )

    frame = customer_metrics(
        orders=orders_table, events=events_table, identity_map=identity_map, as_of=datetime(2026, 1, 31)
    )
    rows = {(row["customer_id"], row["currency"]): row.asDict() for row in frame.collect()}

    assert frame.columns == list(METRIC_COLUMNS)

    assert set(rows) == {("cust_A", "USD"), ("cust_A", "JPY"), ("stripe_customer:cus_9", "USD"), ("cust_E", "XXX")}
    usd = rows[("cust_A", "USD")]
    assert (usd["lifetime_value"], usd["order_count"], usd["average_order_value"]) == (
        Decimal("45"),
        2,
        Decimal("22.5"),
    )
    assert (usd["first_order_at"], usd["last_order_at"], usd["days_since_last_order"]) == (
        datetime(2026, 1, 2),
        datetime(2026, 1, 20),
        11,
    )
    assert usd["events_90d"] == 2  # 100(1-e^-0.15)
    assert usd["engagement_score"] == pytest.approx(13.9, abs=0.05)
    jpy = rows[("cust_A", "JPY")]
    assert (jpy["lifetime_value"], jpy["order_count"], jpy["engagement_score"]) == (Decimal("5000"), 1, 13.9)
    assert rows[("stripe_customer:cus_9", "USD")]["engagement_score"] == 0.0
    eve = rows[("cust_E", "XXX")]  # Events, no orders: ISO 4217's "no currency", so the key has no null.
    assert (eve["order_count"], eve["lifetime_value"], eve["events_90d"]) == (0, None, 1)


def test_consent_per_channel_the_most_recent_statement_wins(zone, spark) -> None:
    customer = {
        "id": "gid://shopify/Customer/7",
        "updatedAt": "2026-01-01T00:00:00Z",
        "defaultEmailAddress": {"emailAddress": "ada@example.com", "marketingState": "SUBSCRIBED"},
        "defaultPhoneNumber": {"phoneNumber": "+33612345678", "marketingState": "SUBSCRIBED"},
        "dataSaleOptOut": False,
    }
    zone.land("shopify", "customers", tap_schema("shopify", "customers"), [customer])
    zone.land(
        "salesforce",
        "Contact",
        SALESFORCE_CONTACT,
        [
            # Later than Shopify: refuses email. Not opted out of calls: no statement about SMS.
            {"Id": "003A", "Email": "ada@example.com", "HasOptedOutOfEmail": True, "DoNotCall": False,
             "SystemModstamp": "2026-01-02T00:00:00.000Z"},
            # Earlier than Shopify: its opt-out of calls loses to Shopify's later SMS subscription.
            {"Id": "003B", "Email": "ada@example.com", "HasOptedOutOfEmail": False, "DoNotCall": True,
             "SystemModstamp": "2025-12-01T00:00:00.000Z"},
        ],
        key="Id",
    )  # fmt: skip
    unsubscribes = spark.createDataFrame(
        [("sms.unsubscribed", "email", "ada@example.com", datetime(2025, 11, 1), None)],
        "type string, customer_id_type string, customer_id_value string, occurred_at timestamp, email string",
    )
    statements = (
        shopify_statements(zone.read("shopify", "customers"))
        .unionByName(salesforce_statements(zone.read("salesforce", "Contact"), "salesforce_contact"))
        .unionByName(event_statements(unsubscribes))
    )
    identity_map = spark.createDataFrame(
        [
            ("shopify_customer", "gid://shopify/Customer/7", "cust_A"),
            ("salesforce_contact", "003A", "cust_A"),
            ("salesforce_contact", "003B", "cust_A"),
            ("email", "ada@example.com", "cust_A"),
        ],
        "id_type string, id_value string, customer_id string",
    )

    people = statements.join(identity_map, ["id_type", "id_value"])
    (row,) = latest_consent(people, ["customer_id"]).collect()

    assert row["customer_id"] == "cust_A"
    assert (row["consent_email"], row["consent_email_at"]) == (False, datetime(2026, 1, 2))
    assert (row["consent_sms"], row["consent_sms_at"]) == (True, datetime(2026, 1, 1))
    assert (row["consent_ads"], row["consent_ads_at"]) == (None, None)  # No source said anything about ads.


def test_a_refusal_wins_a_tie_and_a_later_grant_overrides_an_unsubscribe(spark) -> None:
    statements = spark.createDataFrame(
        [
            ("c1", "email", True, datetime(2026, 1, 1), "shopify"),
            ("c1", "email", False, datetime(2026, 1, 1), "salesforce"),
            ("c2", "sms", False, datetime(2026, 1, 1), "events"),
            ("c2", "sms", True, datetime(2026, 2, 1), "shopify"),
        ],
        "customer_id string, channel string, granted boolean, stated_at timestamp, source string",
    )

    rows = {row["customer_id"]: row for row in latest_consent(statements, ["customer_id"]).collect()}

    assert rows["c1"]["consent_email"] is False
    assert rows["c2"]["consent_sms"] is True
    assert rows["c2"]["consent_sms_at"] == datetime(2026, 2, 1)


def test_erased_people_never_come_back_when_raw_data_is_reprocessed(orders_zone, spark, tmp_path) -> None:
    zone = orders_zone
    processed = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    table = erasure_table(processed.open(), "acme")
    added = add_tombstones(
        spark,
        table,
        [Tombstone.email(" ADA@example.com"), Tombstone.provider_id("stripe_customer", "cus_1")],
    )
    descriptor = orders_descriptor()

    # A full reprocessing of the raw zone, as a --full-refresh does: the tombstones hold.
    kept, erased = drop_erased(read_orders(zone), read_tombstones(spark, table), descriptor.erasure_keys)

    assert {row["order_id"] for row in kept.collect()} == {
        "shopify:order:gid://shopify/Order/2",
        "salesforce:opportunity:006A",
    }
    assert erased.count() == 6  # Ada's Shopify order; Bob's (cus_1) four charges and invoice.
    assert added == 2


def orders_descriptor() -> TransformDescriptor:
    from transforms.orders import cdp_transforms

    (descriptor,) = cdp_transforms()
    return descriptor


def test_tombstones_are_normalised_like_the_transforms_normalise() -> None:
    assert Tombstone.email("  Ada@Example.COM ").id_value == "ada@example.com"
    assert Tombstone.phone("06 12 34 56 78", "FR").id_value == "+33612345678"


def test_rejected_rows_carry_their_rule_column_file_and_row_and_land_in_the_dlq(orders_zone, tmp_path, capsys) -> None:
    zone = orders_zone
    rules = [
        Required("customer_id_type"),
        Format("currency", "^[A-Z]{3}$"),
        Range("amount", minimum=0, maximum=1000),
        Allowed("provider", ("shopify", "stripe", "salesforce")),
    ]

    frame = read_orders(zone)
    valid, rejected = split_by_rules(frame, rules)
    rejected_rows = rejected.collect()
    by_row = {json.loads(row[ROW_COLUMN])["order_id"]: row.asDict() for row in rejected_rows}

    assert valid.count() + len(rejected_rows) == 8  # Rows are conserved: none dropped silently.
    assert by_row["shopify:order:gid://shopify/Order/2"][RULE_COLUMN] == "required"
    assert by_row["shopify:order:gid://shopify/Order/2"][RULE_COLUMN_NAME] == "customer_id_type"
    assert by_row["stripe:charge:ch_jpy"][RULE_COLUMN] == "range [0, 1000]"
    assert by_row["stripe:charge:ch_jpy"][SOURCE_FILE_COLUMN].startswith("acme/stripe/")
    assert by_row["salesforce:opportunity:006A"][RULE_COLUMN] == "range [0, 1000]"  # 1200.5; no currency is allowed.
    assert set(by_row) == {"shopify:order:gid://shopify/Order/2", "stripe:charge:ch_jpy", "salesforce:opportunity:006A"}
    row = json.loads(by_row["stripe:charge:ch_jpy"][ROW_COLUMN])
    assert row["currency"] == "JPY"
    assert not any(name.startswith("_cdp_") for name in row)

    # The quality report's count of values normalisation nulled: Order/2's "not-an-email".
    assert [tuple(row) for row in reason_counts(frame).collect()] == [("email", "invalid email", 1)]

    dlq = ObjectStore(str(tmp_path / "dlq"))
    written = write_rejected(dlq, "acme", "orders", rejected_rows)
    assert sorted(batch.record_count for batch in written) == [1, 1, 1]  # One batch per provider.

    capsys.readouterr()
    assert main(["dlq", "list", "--dlq-url", dlq.url, "--error-type", "transform_rejected", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(b["provider"], b["stream"], b["records"]) for b in listed["batches"]} == {
        ("shopify", "orders", 1),
        ("stripe", "orders", 1),
        ("salesforce", "orders", 1),
    }
    assert main(["dlq", "stats", "--dlq-url", dlq.url, "--raw-url", f"{zone.base}/raw", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {(r["error_type"], r["records"]) for r in stats["by_stream"]} == {("transform_rejected", 1)}
    # Their raw records are counted in the raw zone already: no provider's validation success rate drops.
    assert {(p["provider"], p["dlq_records"], p["success_rate"]) for p in stats["providers"]} == {
        ("shopify", 0, 1.0),
        ("stripe", 0, 1.0),
        ("salesforce", 0, 1.0),
    }
    stripe_batch = next(batch for batch in written if batch.key.startswith("acme/stripe/"))
    assert main(["dlq", "show", stripe_batch.key, "--dlq-url", dlq.url, "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert (group["path"], group["message"]) == ("$.amount", "breaks the rule range [0, 1000]")
    assert group["example_record"]["order_id"] == "stripe:charge:ch_jpy"
    zones = ["--dlq-url", dlq.url, "--raw-url", f"{zone.base}/raw", "--registry-url", f"{zone.base}/registry"]
    assert main(["dlq", "reprocess", stripe_batch.key, *zones, "--json"]) != 0
    assert "not raw records" in capsys.readouterr().out  # Reprocessing them into the raw zone is refused.


def test_a_rule_on_a_missing_column_is_one_clear_error(spark) -> None:
    frame = spark.createDataFrame([(1,)], "n int")
    with pytest.raises(QualityRuleError, match="column\\(s\\) email"):
        split_by_rules(frame, [Required("email")])


def test_the_built_ins_register_through_the_cdp_entry_points() -> None:
    from plugins.manager import create_plugin_manager, transforms

    ordered = {t.name: t for t in transforms(create_plugin_manager())}

    assert {"orders", "products", "events", "customer_metrics"} <= set(ordered)
    assert list(ordered).index("customer_metrics") > list(ordered).index("orders")
    keywords = [source.keyword for source in ordered["products"].inputs if isinstance(source, RawInput)]
    assert keywords == ["shopify_products", "stripe_products", "stripe_prices"]  # No two inputs share a name.


def test_every_built_in_declares_quality_rules_and_erasure_keys_on_its_own_columns() -> None:
    from plugins.manager import create_plugin_manager, transforms

    columns = {"orders": ORDER_COLUMNS, "products": PRODUCT_COLUMNS, "events": EVENT_COLUMNS}
    columns["customer_metrics"] = METRIC_COLUMNS
    for descriptor in transforms(create_plugin_manager()):
        if descriptor.name not in columns:
            continue
        rules = descriptor.load_quality_rules()
        assert rules, descriptor.name
        assert {rule.column for rule in rules} <= set(columns[descriptor.name]), descriptor.name
        assert set(descriptor.key) <= set(columns[descriptor.name])
        for key in descriptor.erasure_keys:
            assert {key.value_column, key.type_column or key.value_column} <= set(columns[descriptor.name])


def test_the_events_transform_reads_every_stream_the_webhook_handlers_feed() -> None:
    from taps.campaign_events.webhook import CampaignEventsWebhookHandler, SendGridWebhookHandler
    from taps.salesforce.webhook import SalesforceWebhookHandler
    from taps.shopify.webhook import ShopifyWebhookHandler
    from taps.stripe.webhook import StripeWebhookHandler
    from taps.webhooks.streams import drained_stream_name
    from transforms.events import webhook_inputs

    handlers = [
        StripeWebhookHandler(),
        ShopifyWebhookHandler(),
        SalesforceWebhookHandler(),
        CampaignEventsWebhookHandler(),
        SendGridWebhookHandler(),
    ]
    expected = {(h.provider, drained_stream_name(stream)) for h in handlers for stream in h.streams}

    assert {(source.provider, source.stream) for source in webhook_inputs()} == expected
