"""The lake engine (Spark over the processed Iceberg tables) gives exactly the PostgreSQL engine's members, case by
case, on the shared segments fixture (tests/segments_support.py): every case of the PostgreSQL compiler's table
(tests/test_segments_compile.py: every operator on every type, behaviour, nested groups, hostile values) and a few
more. One Spark session, the tables read once and cached, every case's filter evaluated in a few Spark jobs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from activators.segments.compile_spark import LakeTables, members_frame
from activators.segments.compile_sql import members_query
from activators.segments.fields import FieldCatalog
from activators.segments.lake import lake_member_ids
from activators.segments.model import SegmentDefinitionError, parse_segment
from tests.segments_support import SegmentFixture
from tests.test_segments_compile import (
    BEHAVIOUR,
    CONDITIONS,
    FIELD_KINDS,
    HOSTILE_FIELDS,
    HOSTILE_VALUES,
    NESTED,
    ago,
    definition,
)

pytestmark = pytest.mark.timeout(1200)  # The fixture (PostgreSQL, Iceberg) and a few hundred filters on Spark.
CHUNK = 60  # Cases per Spark job: one union of many small plans, without one plan too big to analyse quickly.
SegmentCase = Callable[[SegmentFixture], dict[str, Any]]


def hostile_criteria(value: str) -> list[dict[str, Any]]:
    """What the PostgreSQL compiler's injection test tries with each hostile value."""
    return [
        {"field": "first_name", "operator": "equals", "value": value},
        {"field": "first_name", "operator": "contains", "value": value},
        {"field": "first_name", "operator": "in", "value": [value, "x"]},
        {"field": "first_name", "operator": "not_in", "value": [value]},
        {"field": "custom.plan", "operator": "equals", "value": value},
        {"field": "custom.note", "operator": "contains", "value": value},
        {"event": value, "properties": {value: value}},
    ]


def extra(*criteria: dict[str, Any], logic: str = "and", currency: str | None = None) -> SegmentCase:
    return lambda rows: definition(*criteria, logic=logic, currency=currency)


def condition_case(name: str, operator: str, value: Any, currency: str | None) -> SegmentCase:
    """One of h-seg-sql's CONDITIONS; timestamps there are days before the fixture's start, as its test reads them."""

    def build(rows: SegmentFixture) -> dict[str, Any]:
        wanted = value
        if FIELD_KINDS.get(name) == "timestamp" and operator not in ("within_last", "exists"):
            wanted = [ago(rows, item) for item in value] if isinstance(value, list) else ago(rows, value)
        return definition({"field": name, "operator": operator, "value": wanted}, currency=currency)

    return build


#: Every case of the PostgreSQL compiler's table (tests/test_segments_compile.py), under its own test id, then a few
#: more that only an engine comparison needs.
CASES: dict[str, SegmentCase] = {
    **{f"{c[0]}-{c[1]}-{c[2]!r}": condition_case(*c) for c in CONDITIONS},
    **{json.dumps(item): extra(item) for item in BEHAVIOUR},
    **{f"nested{index}": (lambda rows, data=data: data) for index, data in enumerate(NESTED)},
    **{
        f"hostile-{value!r}-{index}": extra(criterion)
        for value in HOSTILE_VALUES
        for index, criterion in enumerate(hostile_criteria(value))
    },
    "event property text is not the number": extra({"event": "order_placed", "properties": {"amount": "7"}}),
    "event of a type never seen": extra({"event": "nothing_happened"}),
    "custom number against its text": extra({"field": "custom.seats", "operator": "equals", "value": "10"}),
    "custom text number is no number": extra({"field": "custom.seats", "operator": "equals", "value": 12}),
    "custom key no one has": extra({"field": "custom.nothing", "operator": "exists", "value": False}),
    "text contains nothing": extra({"field": "first_name", "operator": "contains", "value": ""}),
    "money in the other currency": extra(
        {"field": "average_order_value", "operator": "gte", "value": 5}, currency="USD"
    ),
    "the design's example": extra(
        {"field": "country", "operator": "in", "value": ["DE", "FR", "NL"]},
        {"field": "lifetime_value", "operator": "gte", "value": 100},
        {"field": "last_order_at", "operator": "within_last", "value": 180},
        {"field": "custom.plan", "operator": "not_equals", "value": "free"},
        {"event": "page_viewed", "min_count": 1, "within_days": 90},
        {
            "logic": "or",
            "criteria": [
                {"field": "consent_email", "operator": "equals", "value": "granted"},
                {"field": "phone", "operator": "exists", "value": True},
            ],
        },
        currency="EUR",
    ),
}


@pytest.fixture(scope="module")
def engines(spark, segment_tenant, segment_rows) -> dict[str, Any]:
    """Both engines' members of every case, and what the lake read."""
    from pyspark.sql import functions as F

    zone, postgres_url, tenant = segment_tenant
    segments = {name: parse_segment(build(segment_rows), source=name) for name, build in CASES.items()}
    with psycopg.connect(postgres_url) as conn:
        postgres_catalog = FieldCatalog.from_postgres(conn, tenant)
        postgres = {}
        for name, segment in segments.items():
            compiled = members_query(segment, tenant, postgres_catalog)
            postgres[name] = {row[0] for row in conn.execute(compiled.query, compiled.params)}
    catalog = zone.open()
    lake_catalog = FieldCatalog.from_iceberg(catalog, tenant)
    read = LakeTables.read(spark, catalog, tenant)
    assert read.metrics is not None
    assert read.events is not None
    tables = LakeTables(read.customers.cache(), read.metrics.cache(), read.events.cache())
    lake: dict[str, set[str]] = {name: set() for name in segments}
    names = list(segments)
    for start in range(0, len(names), CHUNK):
        frames = [
            members_frame(segments[name], tables, lake_catalog).select(F.lit(name).alias("case"), "customer_id")
            for name in names[start : start + CHUNK]
        ]
        combined = frames[0]
        for frame in frames[1:]:
            combined = combined.unionByName(frame)
        for row in combined.collect():
            lake[row["case"]].add(row["customer_id"])
    return {"postgres": postgres, "lake": lake, "tables": tables, "catalog": lake_catalog, "segments": segments}


@pytest.mark.parametrize("name", list(CASES))
def test_the_lake_gives_the_postgresql_members(engines, name) -> None:
    assert engines["lake"][name] == engines["postgres"][name]


def test_the_cases_discriminate(engines, segment_rows) -> None:
    everyone = set(segment_rows.customer_ids)
    sizes = {len(members) for members in engines["postgres"].values()}
    partial = [name for name, members in engines["postgres"].items() if members and members != everyone]
    assert len(sizes) > 20  # Many different audiences, ...
    assert len(partial) > len(CASES) // 2  # ... most of them neither everyone nor no one.
    assert engines["lake"]["nested3"] == everyone  # An empty AND group.
    assert engines["lake"]["event of a type never seen"] == set()


def test_lake_member_ids_reads_the_zone_and_returns_one_arrow_column(spark, segment_tenant, engines) -> None:
    zone, _, tenant = segment_tenant
    name = "the design's example"
    table = lake_member_ids(engines["segments"][name], tenant, zone, spark)
    assert table.column_names == ["customer_id"]
    assert str(table.schema.field("customer_id").type) == "string"
    assert table.column("customer_id").to_pylist() == sorted(engines["postgres"][name])
    assert table.num_rows > 0


@pytest.mark.parametrize("field", HOSTILE_FIELDS)
def test_field_names_outside_the_catalogue_are_refused_by_the_lake_too(engines, field) -> None:
    data = definition({"field": field, "operator": "exists", "value": True})
    with pytest.raises(SegmentDefinitionError) as caught:  # Parsing refuses some ("" is no name), the check the rest.
        members_frame(parse_segment(data), engines["tables"], engines["catalog"])
    assert "\n" not in str(caught.value)


def test_money_without_a_currency_is_refused_by_the_lake_too(engines) -> None:
    segment = parse_segment(definition({"field": "lifetime_value", "operator": "gt", "value": 1}))
    with pytest.raises(SegmentDefinitionError, match="currency"):
        members_frame(segment, engines["tables"], engines["catalog"])
