"""The segments' shared fixture: one small deterministic tenant, in the processed zone AND in PostgreSQL.

About 40 customers covering every operator's edges (nulls, two currencies and a no-currency row, custom fields with
text, numbers, booleans and lists, events in and out of windows, names with quotes, backslashes, LIKE metacharacters
and non-ASCII letters; a boolean column, ``vip``, that the real customers table does not have, so booleans are
covered too). :func:`fixture_rows` makes the rows, relative to ``now`` (the test's start: no fixed dates),
:func:`write_fixture` commits the three Iceberg tables (``customers`` with ``custom_fields``, ``customer_metrics``,
``customer_events``) with pyiceberg the way the transforms commit, and :func:`load_fixture` loads them into
PostgreSQL with the real load runner, so both engines read the same data.

tests/conftest.py registers this module as a pytest plugin, so every test module may ask for its fixtures::

    def test_x(segment_tenant: tuple[ProcessedZone, str, str], segment_rows: SegmentFixture) -> None:
        zone, postgres_url, tenant = segment_tenant

Windows leave at least six hours of margin to every boundary, so a session that runs for a while (the fixture is
session scoped) still gives the same members.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from plugins.transforms.catalog import ProcessedZone, create_table
from tests.loading_support import commit

CUSTOMER_COUNT = 40
#: Keys of the three tables, as the load runner takes them.
SEGMENT_KEYS = {
    "customers": ("customer_id",),
    "customer_metrics": ("customer_id", "currency"),
    "customer_events": ("event_id",),
}
DAY = timedelta(days=1)
ODD_NAMES = {
    1: "O'Brien",
    2: 'Say "hi"',
    3: "back\\slash",
    4: "50%_off",
    5: "Zoë",
    6: "Robert'); DROP TABLE customers;--",
    7: "%(p0)s",
    8: "",
    9: "under_score",
    11: "BACK\\SLASH",
}
COUNTRIES = ("DE", "FR", "NL", "US", None)
CONSENT = ("granted", "denied", None)


@dataclass(frozen=True)
class SegmentFixture:
    """The fixture's rows as Python values (what the tables hold), and the instant they are relative to."""

    now: datetime
    customers: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @property
    def customer_ids(self) -> list[str]:
        return [row["customer_id"] for row in self.customers]


def customer_id(n: int) -> str:
    return f"cus_{n:024x}"


def _custom_fields(n: int) -> str | None:
    shapes: list[dict[str, Any] | None] = [
        {"plan": "pro", "seats": n, "beta": True},
        {"plan": "free", "seats": "many"},
        {"plan": "Pro Plus", "seats": 2.5, "tags": ["a", "b"]},
        {},
        None,
        {"plan": None, "seats": 10, "tags": "a,b", "beta": False, "team.size": 4},
        {"plan": "PRO", "seats": "12", "note": "50%_off \\ o'clock"},
    ]
    shape = shapes[n % len(shapes)]
    return None if shape is None else json.dumps(shape, ensure_ascii=False)


def _customer(n: int, now: datetime) -> dict[str, Any]:
    email = None if n % 7 == 3 else f"person{n}@example.org"
    first_name = None if n == 10 else ODD_NAMES.get(n, f"Name{n}")
    return {
        "customer_id": customer_id(n),
        "email": email,
        "emails": [] if email is None else [email, *([f"alt{n}@example.com"] if n % 4 == 0 else [])],
        "phone": None if n % 3 == 0 else f"+4915{n:08d}",
        "first_name": first_name,
        "last_name": f"Last{n % 6}",
        "country": COUNTRIES[n % len(COUNTRIES)],
        "sources": None if n % 8 == 5 else [["stripe"], ["shopify", "stripe"], []][n % 3],
        "record_count": n % 4,
        "vip": (True, False, None)[n % 3],
        "consent_email": CONSENT[n % 3],
        "consent_email_at": None if n % 3 == 2 else now - (n + 0.5) * DAY,
        "consent_sms": CONSENT[(n + 1) % 3],
        "consent_sms_at": None if (n + 1) % 3 == 2 else now - (n + 1.5) * DAY,
        "consent_ads": CONSENT[(n + 2) % 3],
        "consent_ads_at": None if (n + 2) % 3 == 2 else now - (n + 2.5) * DAY,
        "first_seen": now - (n * 10 + 0.5) * DAY,
        "updated_at": None if n % 9 == 4 else now - (n + 0.25) * DAY,
        "custom_fields": _custom_fields(n),
    }


def _metrics(n: int, now: datetime) -> list[dict[str, Any]]:
    """EUR for most, USD too for some (different values, so combining across currencies matters), the no-currency
    row ``XXX`` for some with events and no orders, nothing at all for others."""
    rows: list[dict[str, Any]] = []
    if n % 10 == 7:
        return [_metric_row(n, now, "XXX", None, 0, None, None, events=n % 9, score=float(n % 7) * 2.5)]
    if n % 5 != 4:
        value = None if n == 12 else Decimal(n * 37 % 1000) + Decimal("0.5")
        last = now - ((n * 3) % 200 + 0.25) * DAY
        rows.append(_metric_row(n, now, "EUR", value, n % 5 + 1, now - (n * 7 + 30.5) * DAY, last, n % 9, n * 2.5))
    if n % 3 == 0:
        last = now - (n % 50 + 0.75) * DAY
        rows.append(_metric_row(n, now, "USD", Decimal(n * 11) + Decimal("0.25"), 2, last - 40 * DAY, last, n % 4, 7.5))
    return rows


def _metric_row(
    n: int,
    now: datetime,
    currency: str,
    value: Decimal | None,
    orders: int,
    first: datetime | None,
    last: datetime | None,
    events: int,
    score: float,
) -> dict[str, Any]:
    average = None if value is None or not orders else (value / orders).quantize(Decimal("0.000000001"))
    return {
        "customer_id": customer_id(n),
        "currency": currency,
        "lifetime_value": None if value is None else value.quantize(Decimal("0.000000001")),
        "order_count": orders,
        "average_order_value": average,
        "first_order_at": first,
        "last_order_at": last,
        "days_since_last_order": None if last is None else (now - last).days,
        "events_90d": events,
        "engagement_score": score,
        "computed_at": now,
    }


def _events(n: int, now: datetime) -> list[dict[str, Any]]:
    """page_viewed n % 6 times, spread over 0.5 .. 80.5 days ago, on /pricing or /home; email_opened for some
    (properties null for one), order_placed with a number and a boolean property; a future event for one."""
    rows: list[dict[str, Any]] = []

    def add(kind: str, days_ago: float, properties: dict[str, Any] | None) -> None:
        rows.append(
            {
                "event_id": f"evt_{n:03d}_{len(rows):03d}",
                "customer_id": customer_id(n),
                "type": kind,
                "occurred_at": now - days_ago * DAY,
                "properties": None if properties is None else json.dumps(properties, ensure_ascii=False),
            }
        )

    for k in range(n % 6):
        add("page_viewed", (k * 13 + n) % 80 + 0.5, {"path": "/pricing" if (k + n) % 2 else "/home", "k": k})
    if n % 4 == 1:
        add("email_opened", n % 20 + 0.5, None if n == 5 else {"campaign": "spring", "clicked": n % 8 == 1})
    if n % 5 == 2:
        add("order_placed", n + 0.5, {"amount": n, "first": n < 20, "path": "/checkout"})
    if n == 13:
        add("page_viewed", -2.5, {"path": "/pricing"})  # in the future: counted for all time, never in a window
    return rows


def fixture_rows(now: datetime) -> SegmentFixture:
    """The fixture's rows, relative to ``now`` (aware, UTC)."""
    numbers = range(CUSTOMER_COUNT)
    return SegmentFixture(
        now=now,
        customers=[_customer(n, now) for n in numbers],
        metrics=[row for n in numbers for row in _metrics(n, now)],
        events=[row for n in numbers for row in _events(n, now)],
    )


def _schemas() -> dict[str, Any]:
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DecimalType,
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    def of(*columns: tuple[str, Any]) -> StructType:
        return StructType([StructField(name, kind) for name, kind in columns])

    text, stamp, money = StringType(), TimestampType(), DecimalType(38, 9)
    return {
        "customers": of(
            ("customer_id", text),
            ("email", text),
            ("emails", ArrayType(text)),
            ("phone", text),
            ("first_name", text),
            ("last_name", text),
            ("country", text),
            ("sources", ArrayType(text)),
            ("record_count", LongType()),
            ("vip", BooleanType()),
            *(
                (f"consent_{channel}{suffix}", kind)
                for channel in ("email", "sms", "ads")
                for suffix, kind in (("", text), ("_at", stamp))
            ),
            ("first_seen", stamp),
            ("updated_at", stamp),
            ("custom_fields", text),
        ),
        "customer_metrics": of(
            ("customer_id", text),
            ("currency", text),
            ("lifetime_value", money),
            ("order_count", LongType()),
            ("average_order_value", money),
            ("first_order_at", stamp),
            ("last_order_at", stamp),
            ("days_since_last_order", IntegerType()),
            ("events_90d", LongType()),
            ("engagement_score", DoubleType()),
            ("computed_at", stamp),
        ),
        "customer_events": of(
            ("event_id", text),
            ("customer_id", text),
            ("type", text),
            ("occurred_at", stamp),
            ("properties", text),
        ),
    }


def write_fixture(catalog: Any, tenant: str, rows: SegmentFixture) -> None:
    """The three Iceberg tables of ``tenant``, each committed in one snapshot."""
    schemas = _schemas()
    for table, data in (
        ("customers", rows.customers),
        ("customer_metrics", rows.metrics),
        ("customer_events", rows.events),
    ):
        commit(create_table(catalog, tenant, table, schemas[table]), data)


def load_fixture(catalog: Any, tenant: str, postgres_url: str) -> None:
    """The tenant's three tables loaded into PostgreSQL by the real load runner (schema ``tenant``)."""
    from loaders.postgres.loader import PostgresLoader
    from plugins.loaders.runner import load_tables

    with PostgresLoader(postgres_url) as loader:
        done = load_tables(catalog, {"postgres": loader}, SEGMENT_KEYS, tenants=[tenant])
    assert sorted(item.table for item in done) == sorted(SEGMENT_KEYS)


def build_segment_tenant(zone: ProcessedZone, postgres_url: str, tenant: str, rows: SegmentFixture) -> None:
    """Write and load the fixture for ``tenant``."""
    catalog = zone.open()
    write_fixture(catalog, tenant, rows)
    load_fixture(catalog, tenant, postgres_url)


@pytest.fixture(scope="session")
def processed_zone(tmp_path_factory: pytest.TempPathFactory) -> ProcessedZone:
    """A local processed zone (warehouse folder + SQLite catalog) for the whole session."""
    folder: Path = tmp_path_factory.mktemp("segments-processed")
    (folder / "warehouse").mkdir()
    return ProcessedZone((folder / "warehouse").as_uri(), f"sqlite:///{folder / 'catalog.db'}")


@pytest.fixture(scope="session")
def segment_rows() -> SegmentFixture:
    """The fixture's rows, relative to the session's start."""
    return fixture_rows(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def segment_tenant_factory(
    processed_zone: ProcessedZone, postgres_url: str
) -> Callable[[], tuple[ProcessedZone, str, str, SegmentFixture]]:
    """Makes a fresh fixture tenant per call, ``(zone, postgres_url, tenant, rows)``: for tests that change its data
    (the shared ``segment_tenant`` must stay as built)."""

    def make() -> tuple[ProcessedZone, str, str, SegmentFixture]:
        rows = fixture_rows(datetime.now(UTC).replace(microsecond=0))
        tenant = f"seg{uuid.uuid4().hex[:8]}"
        build_segment_tenant(processed_zone, postgres_url, tenant, rows)
        return processed_zone, postgres_url, tenant, rows

    return make


@pytest.fixture(scope="session")
def segment_tenant(
    processed_zone: ProcessedZone, postgres_url: str, segment_rows: SegmentFixture
) -> tuple[ProcessedZone, str, str]:
    """``(zone, postgres_url, tenant)``: the fixture written to the zone and loaded into PostgreSQL, once."""
    tenant = f"seg{uuid.uuid4().hex[:8]}"
    build_segment_tenant(processed_zone, postgres_url, tenant, segment_rows)
    return processed_zone, postgres_url, tenant
