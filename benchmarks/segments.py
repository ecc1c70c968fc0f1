"""A segment refresh (members, entered/left, the store's writes) against a plain ``INSERT ... SELECT`` of its criteria.

    .venv/bin/python benchmarks/segments.py                     # 1M customers, median of 3
    .venv/bin/python benchmarks/segments.py --customers 10000000 --runs 1   # the linearity check (not in CI)

Generates, directly in the embedded PostgreSQL (or --postgres-url) with ``generate_series``, the three tables the
loaders serve, in the loader's column types and indexes: ``customers`` (with ``custom_fields``), ``customer_metrics``
(one EUR row per customer, a USD row for every fifth) and ``customer_events`` (0-5 ``page_viewed`` events per
customer over the last 60 days). The segment has five criteria: country, lifetime value (EUR), order recency, a
custom field and a behavioural one (at least 3 page views in 30 days). Measured in the same run, median of --runs:

- **floor**: a hand-written ``INSERT ... SELECT`` of the same criteria into a temporary table, committed;
- **first refresh**: ``store.refresh`` of a just-created segment (everyone enters), plus the Parquet export of the
  refresh when ``activators.segments.export`` is installed;
- **refresh after 1%**: after 1% of the metric rows change (some customers enter, some leave), again with export.

Prints seconds and each refresh's ratio to the floor. Goal (issue 14): the whole refresh, diff and export within 5x of
the floor, and linear in customers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TENANT = "bench_segments"
SEGMENT = {
    "name": "bench-high-value-eu",
    "description": "EU pro-plan customers worth 500 EUR or more who ordered lately and keep looking at pricing",
    "type": "dynamic",
    "refresh_frequency": "0 * * * *",
    "currency": "EUR",
    "criteria": [
        {"field": "country", "operator": "in", "value": ["DE", "FR", "NL"]},
        {"field": "lifetime_value", "operator": "gte", "value": 500},
        {"field": "last_order_at", "operator": "within_last", "value": 90},
        {"field": "custom.plan", "operator": "equals", "value": "pro"},
        {"event": "page_viewed", "min_count": 3, "within_days": 30},
    ],
}

FLOOR = """
INSERT INTO floor_members (customer_id)
SELECT c.customer_id FROM {schema}.customers c
JOIN {schema}.customer_metrics m ON m.customer_id = c.customer_id AND m.currency = 'EUR'
WHERE c.country IN ('DE', 'FR', 'NL') AND m.lifetime_value >= 500 AND m.last_order_at >= now() - interval '90 days'
  AND (c.custom_fields::jsonb ->> 'plan') = 'pro'
  AND c.customer_id IN (
    SELECT e.customer_id FROM {schema}.customer_events e
    WHERE e.type = 'page_viewed' AND e.occurred_at >= now() - interval '30 days'
    GROUP BY e.customer_id HAVING count(*) >= 3)
"""

TABLES = """
DROP SCHEMA IF EXISTS {schema} CASCADE;
CREATE SCHEMA {schema};
CREATE TABLE {schema}.customers (
  customer_id text NOT NULL, email text, emails text[], phone text, phones text[], first_name text, last_name text,
  full_name text, address_line1 text, address_line2 text, city text, region text, postal_code text, country text,
  stripe_customer_ids text[], sources text[], record_count bigint, consent_email text,
  consent_email_at timestamp with time zone, consent_sms text, consent_sms_at timestamp with time zone,
  consent_ads text, consent_ads_at timestamp with time zone, first_seen timestamp with time zone,
  updated_at timestamp with time zone, custom_fields text);
CREATE TABLE {schema}.customer_metrics (
  customer_id text NOT NULL, currency text NOT NULL, lifetime_value numeric(38,9), order_count bigint,
  average_order_value numeric(38,9), first_order_at timestamp with time zone, last_order_at timestamp with time zone,
  days_since_last_order integer, events_90d bigint, engagement_score double precision,
  computed_at timestamp with time zone);
CREATE TABLE {schema}.customer_events (
  event_id text NOT NULL, customer_id text, type text, occurred_at timestamp with time zone, properties text);
"""

DATA = """
INSERT INTO {schema}.customers
SELECT 'cus_' || lpad(n::text, 9, '0'), 'person' || n || '@example.org', ARRAY['person' || n || '@example.org'],
  '+1555' || lpad((n % 10000000)::text, 7, '0'), ARRAY['+1555' || lpad((n % 10000000)::text, 7, '0')],
  'First' || n % 5000, 'Last' || n % 7919, 'First' || n % 5000 || ' Last' || n % 7919, n || ' Main Street', NULL,
  'City' || n % 997, NULL, lpad((n % 99999)::text, 5, '0'), (ARRAY['US','DE','FR','NL','GB','BR','JP','ES'])[n % 8 + 1],
  ARRAY['cus_' || n], ARRAY['stripe'], 1, CASE WHEN n % 10 = 0 THEN 'denied' ELSE 'granted' END, now(),
  'unknown', NULL, 'granted', now(), now() - interval '400 days', now(),
  json_build_object('plan', (ARRAY['free','pro','team'])[n % 3 + 1], 'seats', n % 50)::text
FROM generate_series(1, {customers}) n;
INSERT INTO {schema}.customer_metrics
SELECT 'cus_' || lpad(n::text, 9, '0'), currency, ((n::bigint * 7919) % 200000) / 100.0, 1 + n % 12,
  ((n::bigint * 7919) % 200000) / 100.0 / (1 + n % 12), now() - interval '700 days',
  now() - ((n / 7 * 13) % 200) * interval '1 day', ((n / 7 * 13) % 200)::integer, n % 6, (n % 100) / 100.0,
  now()
FROM generate_series(1, {customers}) n, LATERAL (SELECT 'EUR' UNION ALL SELECT 'USD' WHERE n % 5 = 0) c(currency);
INSERT INTO {schema}.customer_events
SELECT 'evt_' || n || '_' || k, 'cus_' || lpad(n::text, 9, '0'), 'page_viewed',
  now() - ((n * 7 + k * 13) % 60) * interval '1 day', json_build_object('path', '/pricing')::text
FROM generate_series(1, {customers}) n, generate_series(1, (n / 24) % 6) k;
ALTER TABLE {schema}.customers ADD PRIMARY KEY (customer_id);
ALTER TABLE {schema}.customer_metrics ADD PRIMARY KEY (customer_id, currency);
ALTER TABLE {schema}.customer_events ADD PRIMARY KEY (event_id);
CREATE INDEX ON {schema}.customers (email);
CREATE INDEX ON {schema}.customer_metrics (lifetime_value);
CREATE INDEX ON {schema}.customer_metrics (last_order_at);
CREATE INDEX ON {schema}.customer_events (customer_id, occurred_at);
VACUUM (ANALYZE) {schema}.customers;
VACUUM (ANALYZE) {schema}.customer_metrics;
VACUUM (ANALYZE) {schema}.customer_events;
"""

#: 1% of the metric rows move across the value and recency thresholds (some customers enter, some leave).
CHANGE = """
UPDATE {schema}.customer_metrics
SET lifetime_value = CASE WHEN lifetime_value >= 500 THEN 100 ELSE 1500 END,
    last_order_at = now() - interval '1 day'
WHERE abs(hashtext(customer_id || '{run}')) % 100 = 0
"""


def generate(conn: Any, customers: int) -> float:
    """The three tables, filled, indexed and vacuumed (hint bits and the visibility map set, as on tables that have
    been in use: without it the first query after loading pays for them, and autovacuum competes with the runs)."""
    from psycopg import sql

    started = time.monotonic()
    schema = sql.Identifier(TENANT).as_string(conn)
    for script in (TABLES, DATA):
        for statement in script.format(schema=schema, customers=customers).split(";\n"):
            if statement.strip():
                conn.execute(statement)  # type: ignore[arg-type]  # a benchmark's fixed text
    return time.monotonic() - started


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def floor(conn: Any) -> float:
    from psycopg import sql

    schema = sql.Identifier(TENANT).as_string(conn)

    def run() -> None:
        with conn.transaction():
            conn.execute("CREATE TEMPORARY TABLE floor_members (customer_id text NOT NULL) ON COMMIT DROP")
            conn.execute(FLOOR.format(schema=schema))  # type: ignore[arg-type]

    return timed(run)[0]


def exporter(folder: str) -> Callable[[Any, int], Any] | None:
    """h-seg-export's ``export_refresh`` (the refresh's Parquet files, for email) when installed, else None."""
    try:
        from activators.segments.export import export_refresh
    except ImportError:
        return None
    from plugins.transforms.catalog import ProcessedZone

    exports = str(Path(folder) / "exports")
    (Path(folder) / "warehouse").mkdir()
    # An empty processed zone: no erasure tombstones to leave out (the export still reads the zone for them).
    processed = ProcessedZone((Path(folder) / "warehouse").as_uri(), f"sqlite:///{Path(folder) / 'catalog.db'}")
    # Warm-up outside the timings: the catalog's SQLite file and its tables are created on first open, and the
    # export's modules (pyiceberg, Parquet) imported, as in any long-running scheduler.
    from activators.segments.export import read_tombstones

    read_tombstones(processed, TENANT)

    def run(conn: Any, refresh_id: int) -> Any:
        return export_refresh(
            conn, TENANT, str(SEGMENT["name"]), refresh_id, exports, channel="email", processed=processed
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres-url", help="default: the embedded server in data/postgres (started on demand)")
    options = parser.parse_args()

    from activators.segments import store
    from activators.segments.model import parse_segment
    from loaders.postgres.embedded import resolve_url

    segment = parse_segment(SEGMENT, source="benchmarks/segments.py")
    conn = store.connect(resolve_url(options.postgres_url))
    print(f"generating {options.customers:,} customers in {TENANT} ...", flush=True)
    print(f"  generated in {generate(conn, options.customers):.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="cdp-bench-segments-") as folder:
        export = exporter(folder)
        if export is None:
            print("activators.segments.export is not installed: timing the refresh without the Parquet export")
        floors: list[float] = []
        firsts: list[tuple[float, float]] = []  # (refresh + entered/left, export) seconds
        changed: list[tuple[float, float]] = []

        def refresh() -> tuple[Any, tuple[float, float]]:
            refresh_seconds, result = timed(lambda: store.refresh(conn, TENANT, segment.name))
            export_seconds = timed(lambda: export(conn, result.refresh_id))[0] if export is not None else 0.0
            return result, (refresh_seconds, export_seconds)

        for run in range(options.runs):
            floors.append(floor(conn))
            if any(item.name == segment.name for item in store.list_segments(conn, TENANT)):
                store.delete(conn, TENANT, segment.name)
            store.create(conn, TENANT, segment)
            first, seconds = refresh()
            firsts.append(seconds)
            conn.execute(CHANGE.format(schema=TENANT, run=run))  # type: ignore[arg-type]
            conn.execute(f"ANALYZE {TENANT}.customer_metrics")  # type: ignore[arg-type]
            second, seconds = refresh()
            changed.append(seconds)
            print(
                f"  run {run + 1}: floor {floors[-1]:.3f} s, first refresh {firsts[-1][0]:.3f} + export "
                f"{firsts[-1][1]:.3f} s ({first.size:,} members), after 1% {changed[-1][0]:.3f} + export "
                f"{changed[-1][1]:.3f} s ({second.entered:,} entered, {second.left:,} left)",
                flush=True,
            )
    median_floor = statistics.median(floors)
    what = "refresh + entered/left" + (" + Parquet export" if export is not None else " (no export)")
    print(f"\n{options.customers:,} customers, median of {options.runs} ({what}):")
    print(f"  floor (INSERT ... SELECT)   {median_floor:8.3f} s")
    for label, values in (("first refresh", firsts), ("refresh after 1% change", changed)):
        total = statistics.median(sum(pair) for pair in values)
        parts = f"refresh {statistics.median(pair[0] for pair in values):.3f} s"
        if export is not None:
            parts += f", export {statistics.median(pair[1] for pair in values):.3f} s"
        print(f"  {label:<27} {total:8.3f} s   {total / median_floor:5.1f}x the floor   ({parts}; medians)")
    conn.close()


if __name__ == "__main__":
    main()
