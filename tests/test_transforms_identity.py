"""Identity resolution on real Spark: the components against a union-find, links across providers, the over-merging
guards and their audit, stable ids through the persisted identity map, merges, incremental runs and survivorship."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from plugins.core.errors import ConfigError
from plugins.transforms import frames
from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.identity import (
    IDENTITY_MERGES_TABLE,
    RULE_BLOCKED,
    RULE_PROFILE_CAP,
    RULE_SHARED,
    IdentityError,
    IdentityResolution,
    IdentityScope,
    IdentitySettings,
    IdTypeRules,
    SurvivorshipSettings,
    _close_over_capped,
    _union_find_components,
    commit_identity,
    connected_components,
    load_identity_map,
    resolve_identities,
    survive_fields,
)
from plugins.transforms.table_reader import read_table

OBSERVATION_DDL = "source string, record_id string, id_type string, id_value string, observed_at timestamp"
RESOLVED_AT = datetime(2026, 2, 1, tzinfo=UTC)

Row = tuple[str, str, str, str | None, int]


def day(number: int) -> datetime:
    return datetime(2026, 1, number, 12, tzinfo=UTC)


def observations(spark, rows: Iterable[Row]):
    return spark.createDataFrame([(*row[:4], day(row[4])) for row in rows], OBSERVATION_DDL)


def record(source: str, record_id: str, identifiers: dict[str, str | list[str | None] | None], when: int) -> list[Row]:
    rows: list[Row] = []
    for id_type, values in identifiers.items():
        for value in values if isinstance(values, list) else [values]:
            rows.append((source, record_id, id_type, value, when))
    return rows


FRONT_DESK = "+15559990000"
EXPECTED_PEOPLE = [
    # Ann: the same email in Stripe and Shopify; a webhook event carries her Stripe id.
    {"stripe:cus_ann", "shopify:101", "webhook:evt_1"},
    # Bob: only a phone in common.
    {"shopify:102", "salesforce:003B"},
    # Cat: Stripe and Shopify share an email, Shopify and a Salesforce lead a phone.
    {"stripe:cus_cat", "shopify:103", "salesforce:00QC"},
]


def scenario_rows() -> list[Row]:
    return [
        *record("stripe", "stripe:cus_ann", {"stripe_customer": "cus_ann", "email": "ann@x.io"}, 1),
        *record("shopify", "shopify:101", {"shopify_customer": "101", "email": "ann@x.io"}, 2),
        *record("webhook", "webhook:evt_1", {"webhook_subject": "evt_1", "stripe_customer": "cus_ann"}, 3),
        *record("shopify", "shopify:102", {"shopify_customer": "102", "phone": "+15551230002", "email": "bob@a.io"}, 2),
        *record("salesforce", "salesforce:003B", {"salesforce_contact": "003B", "phone": "+15551230002"}, 4),
        *record("stripe", "stripe:cus_cat", {"stripe_customer": "cus_cat", "email": "cat@x.io"}, 3),
        *record("shopify", "shopify:103", {"shopify_customer": "103", "email": "cat@x.io", "phone": "+15551230003"}, 2),
        *record("salesforce", "salesforce:00QC", {"salesforce_lead": "00QC", "phone": "+15551230003"}, 1),
        # Eleven customers of one shop give its front-desk phone: more than the phone limit of 10 records.
        *[
            row
            for i in range(11)
            for row in record(
                "shopify",
                f"shopify:2{i:02d}",
                {"shopify_customer": f"2{i:02d}", "email": f"d{i}@x.io", "phone": FRONT_DESK},
                5,
            )
        ],
        # Placeholders never link.
        *record("stripe", "stripe:cus_n1", {"stripe_customer": "cus_n1", "email": "n/a"}, 6),
        *record("stripe", "stripe:cus_n2", {"stripe_customer": "cus_n2", "email": "n/a"}, 6),
        *record("stripe", "stripe:cus_t1", {"stripe_customer": "cus_t1", "email": "test@example.com"}, 6),
        *record("stripe", "stripe:cus_t2", {"stripe_customer": "cus_t2", "email": "test@example.com"}, 6),
        *record("shopify", "shopify:301", {"phone": "+10000000000"}, 6),
        *record("salesforce", "salesforce:003Z", {"salesforce_contact": "003Z", "phone": ["+10000000000", None]}, 6),
        # A contact with six addresses: the profile keeps the five most recent, the oldest stops linking.
        *[row for i in range(1, 7) for row in record("salesforce", "salesforce:003E", {"email": f"e{i}@x.io"}, i)],
        *record("salesforce", "salesforce:003E", {"salesforce_contact": "003E"}, 6),
        *record("shopify", "shopify:401", {"shopify_customer": "401", "email": "e1@x.io"}, 1),
    ]


def people(resolution: IdentityResolution) -> set[frozenset[str]]:
    by_customer: dict[str, set[str]] = {}
    for row in resolution.records.collect():
        by_customer.setdefault(row["customer_id"], set()).add(row["record_id"])
    return {frozenset(members) for members in by_customer.values()}


def expected_people(rows: Iterable[Row]) -> set[frozenset[str]]:
    grouped = [frozenset(group) for group in EXPECTED_PEOPLE]
    grouped_records = set().union(*grouped)
    alone = {frozenset({row[1]}) for row in rows if row[1] not in grouped_records}
    return {*grouped, *alone}


@pytest.fixture(scope="module")
def resolved(spark) -> IdentityResolution:
    return resolve_identities(observations(spark, scenario_rows()), run_id="run-1", resolved_at=RESOLVED_AT)


def reference_components(edges: Iterable[tuple[str | None, str | None]]) -> dict[str, str]:
    """Each node's component named by its smallest node, by breadth-first search (not the code's union-find)."""
    neighbours: dict[str, set[str]] = {}
    for left, right in edges:
        for end in (left, right):
            if end is not None:
                neighbours.setdefault(end, set())
        if left is not None and right is not None:
            neighbours[left].add(right)
            neighbours[right].add(left)
    found: dict[str, str] = {}
    for start in neighbours:
        if start in found:
            continue
        seen, queue = {start}, [start]
        while queue:
            for neighbour in neighbours[queue.pop()] - seen:
                seen.add(neighbour)
                queue.append(neighbour)
        smallest = min(seen)
        found.update(dict.fromkeys(seen, smallest))
    return found


def test_the_one_task_union_find_names_components_by_their_smallest_node_across_batches() -> None:
    rng = random.Random(5)
    names = ["émile", "zoë", "ann", "Ann", "😀", "ß", "z", "é"] + [f"n{i}" for i in range(300)]
    edges: list[tuple[str | None, str | None]] = [(rng.choice(names), rng.choice(names)) for _ in range(250)]
    edges += [("lonely", "lonely"), ("half", None), (None, None)]
    batches = [
        pa.RecordBatch.from_pylist([{"src": a, "dst": b} for a, b in edges[start : start + 40]])
        for start in range(0, len(edges), 40)
    ]

    found = {}
    for batch in _union_find_components(iter(batches)):
        found.update(zip(batch.column("node").to_pylist(), batch.column("component").to_pylist(), strict=True))

    assert found == reference_components(edges)
    # Python orders strings by code point, Spark by UTF-8 bytes: the same order, so both ways pick the same node.
    assert sorted(found, key=lambda node: node.encode()) == sorted(found)


@pytest.fixture(params=["one task", "large-star/small-star"])
def components_way(request, monkeypatch) -> str:
    """Each connected-components test runs both ways: the small graph in one task, and (no graph counted as few)
    through the distributed rounds."""
    if request.param == "large-star/small-star":
        monkeypatch.setattr(frames, "MAX_BROADCAST_ROWS", 0)
    return str(request.param)


def components_event(way: str) -> str:
    """The event that says which way the components were found."""
    return "identity_components_found" if way == "one task" else "identity_components_converged"


def test_components_match_a_reference_on_a_chain_of_50_and_a_star(spark, components_way, caplog) -> None:
    shuffled = random.Random(7).sample(range(100, 150), 50)  # The chain's smallest node sits anywhere along it.
    chain = [(f"c{shuffled[i]}", f"c{shuffled[i + 1]}") for i in range(49)]
    star = [("s99", f"s{i:02d}") for i in range(50)]
    lonely = [("z1", "z1")]
    edges = chain + star + lonely

    with caplog.at_level(logging.INFO, logger="plugins.transforms.identity"):
        found = connected_components(spark.createDataFrame(edges, "src string, dst string"), checkpoint_every=2)

    result = {row["node"]: row["component"] for row in found.collect()}
    assert result == reference_components(edges)
    assert set(result.values()) == {"c100", "s00", "z1"}
    assert [r.cdp_event for r in caplog.records if r.name == "plugins.transforms.identity"] == [
        components_event(components_way)
    ]


def test_components_stop_only_at_the_star_forest_whatever_the_shape_and_give_up_past_max_rounds(
    spark, components_way
) -> None:
    rng = random.Random(11)
    # Shapes that each way of labelling handles worst: a chain numbered from its middle, a star around its largest
    # node, a cycle, a binary tree, a ladder, and sparse random graphs with many small components.
    middle = [(f"m{50 + (-1) ** i * (i // 2):03d}", f"m{50 + (-1) ** (i + 1) * ((i + 1) // 2):03d}") for i in range(60)]
    largest_centre = [("a999", f"a{i:03d}") for i in range(30)]
    cycle = [(f"y{i:02d}", f"y{(i + 1) % 25:02d}") for i in range(25)]
    tree = [(f"t{i:03d}", f"t{(i - 1) // 2:03d}") for i in range(1, 63)]
    ladder = [(f"l{i:02d}{side}", f"l{i + 1:02d}{side}") for i in range(20) for side in "ab"]
    ladder += [(f"l{i:02d}a", f"l{i:02d}b") for i in range(0, 21, 5)]
    graphs = [middle + largest_centre, cycle + tree, ladder]
    for size in (40, 200):
        graphs.append([(f"r{rng.randrange(size)}", f"r{rng.randrange(size)}") for _ in range(size * 2 // 3)])

    for edges in graphs:
        found = connected_components(spark.createDataFrame(edges, "src string, dst string"), checkpoint_every=3)
        assert {row["node"]: row["component"] for row in found.collect()} == reference_components(edges)

    if components_way == "large-star/small-star":  # One task has no rounds to give up on.
        with pytest.raises(IdentityError, match="did not converge in 1 rounds"):
            connected_components(spark.createDataFrame(middle, "src string, dst string"), max_rounds=1)


def test_records_become_the_people_of_a_reference_search_whichever_identifiers_they_share(
    spark, components_way
) -> None:
    """Only identifiers two records hold enter the graph: on random records drawing emails and phones from small pools
    (many held once, some by several records, records holding two or three shared ones), the people are those of a
    breadth-first search over every record and identifier."""
    rng = random.Random(11)
    rows: list[Row] = []
    for number in range(160):
        identifiers: dict[str, str | list[str | None] | None] = {"stripe_customer": f"cus_{number}"}
        if rng.random() < 0.8:
            identifiers["email"] = [f"e{rng.randrange(120)}@x.io" for _ in range(rng.choice([1, 1, 2]))]
        if rng.random() < 0.6:
            identifiers["phone"] = f"+1555{rng.randrange(150):07d}"
        rows += record("stripe", f"stripe:{number}", identifiers, 1 + number % 5)
    unlimited = IdTypeRules()  # No guard cuts: every shared identifier links.
    settings = IdentitySettings(types={"email": unlimited, "phone": unlimited})

    resolution = resolve_identities(
        observations(spark, rows), run_id="run-1", resolved_at=RESOLVED_AT, settings=settings
    )

    # The reference links each record to each of its identifiers, shared or not.
    reference = reference_components((row[1], f"{row[2]}:{row[3]}") for row in rows)
    by_component: dict[str, set[str]] = {}
    for row in rows:
        by_component.setdefault(reference[row[1]], set()).add(row[1])
    assert people(resolution) == {frozenset(members) for members in by_component.values()}
    assert len(by_component) < 150  # Records did link.
    assert any(len(members) >= 3 for members in by_component.values())


def test_a_shared_email_a_shared_phone_and_a_chain_across_three_providers_link_records_into_people(
    resolved,
) -> None:
    assert people(resolved) == expected_people(scenario_rows())
    ann = {row["record_id"]: row["customer_id"] for row in resolved.records.collect()}
    assert ann["stripe:cus_ann"].startswith("cus_")
    assert resolved.merges.isEmpty()  # Nothing existed before: nothing merged away.


def test_every_identifier_of_a_linked_profile_maps_to_its_one_customer_id(resolved) -> None:
    linked = resolved.identity_map.filter("linked").groupBy("id_type", "id_value")
    assert {row["ids"] for row in linked.agg(F.countDistinct("customer_id").alias("ids")).collect()} == {1}
    cut = {(row["id_type"], row["id_value"]) for row in resolved.identity_map.filter("not linked").collect()}
    assert ("phone", FRONT_DESK) in cut
    assert ("email", "e1@x.io") in cut
    assert ("email", "e2@x.io") not in cut


def test_the_guards_cut_a_shared_phone_placeholders_and_values_beyond_the_cap_and_audit_them(resolved) -> None:
    audit = {
        (row["rule"], row["id_type"], row["id_value"]): row["records_affected"] for row in resolved.audit.collect()
    }
    assert audit == {
        (RULE_SHARED, "phone", FRONT_DESK): 11,
        (RULE_BLOCKED, "email", "n/a"): 2,
        (RULE_BLOCKED, "email", "test@example.com"): 2,
        (RULE_BLOCKED, "phone", "+10000000000"): 2,
        (RULE_BLOCKED, "phone", None): 1,
        (RULE_PROFILE_CAP, "email", "e1@x.io"): 2,
    }
    assert resolved.guard_counts() == {RULE_BLOCKED: 4, RULE_SHARED: 1, RULE_PROFILE_CAP: 1}
    assert {row["run_id"] for row in resolved.audit.collect()} == {"run-1"}


def test_the_shared_value_guard_counts_records_not_rows(spark) -> None:
    """A record seen under two sources, or a row without a record, adds no record to a value's count: two records
    hold ``s@x.io`` (one of them twice), so a limit of two keeps it linking and a limit of one cuts it, audited as two
    records."""
    rows = [
        ("stripe", "a", "email", "s@x.io", 1),
        ("shopify", "a", "email", "s@x.io", 2),
        ("stripe", "b", "email", "s@x.io", 3),
        ("stripe", None, "email", "s@x.io", 4),
    ]
    frame = spark.createDataFrame([(*row[:4], day(row[4])) for row in rows], OBSERVATION_DDL)

    def resolve(limit: int) -> IdentityResolution:
        rules = IdentitySettings(types={"email": IdTypeRules(max_records_per_value=limit)})
        return resolve_identities(frame, run_id="r", resolved_at=RESOLVED_AT, settings=rules)

    kept = resolve(2)
    ids = {row["record_id"]: row["customer_id"] for row in kept.records.collect() if row["record_id"] is not None}
    assert ids["a"] == ids["b"]
    assert kept.audit.count() == 0
    cut = resolve(1)
    ids = {row["record_id"]: row["customer_id"] for row in cut.records.collect() if row["record_id"] is not None}
    assert ids["a"] != ids["b"]
    assert [(row["rule"], row["records_affected"]) for row in cut.audit.collect()] == [(RULE_SHARED, 2)]


def test_identifiers_with_a_null_part_neither_lend_an_earlier_id_nor_count_as_shared(spark, tmp_path) -> None:
    """A previous row whose key has a null part matches no observation in a rebuild (r1's null email lends r1 no id,
    so r2, which holds the linking identifier, keeps the profile's); an identifier without a type is no shared value
    of any type."""
    catalog = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}").open()
    first = [("s", "r1", "zid", "k", 1), ("s", "r1", "email", None, 1), ("s", "r2", "zid", "k", 2)]
    earlier = resolve_identities(observations(spark, first), run_id="r1", resolved_at=RESOLVED_AT)
    commit_identity(catalog, "acme", earlier, run_id="r1")
    (profile,) = {row["customer_id"] for row in earlier.records.collect()}
    later = [("s", "r1", "email", None, 5), ("s", "r2", "zid", "k", 2)]

    rebuilt = resolve_identities(
        observations(spark, later),
        run_id="full",
        resolved_at=RESOLVED_AT,
        previous=load_identity_map(spark, catalog, "acme"),
        scope=IdentityScope.REBUILD,
    )

    ids = {row["record_id"]: row["customer_id"] for row in rebuilt.records.collect()}
    assert ids["r2"] == profile != ids["r1"]
    (null_row,) = [row for row in rebuilt.identity_map.collect() if row["record_id"] == "r1"]
    assert null_row["first_seen"] == day(5).replace(tzinfo=None)  # Spark gives naive UTC datetimes.

    untyped = [("s", "r1", None, "x", 1), ("s", "r2", None, "x", 1)]
    limit_one = IdentitySettings(other_types=IdTypeRules(max_records_per_value=1))
    resolved = resolve_identities(observations(spark, untyped), run_id="r", resolved_at=RESOLVED_AT, settings=limit_one)
    assert resolved.audit.count() == 0
    assert len({row["customer_id"] for row in resolved.records.collect()}) == 1


def test_the_cap_closure_follows_cut_values_from_profile_to_profile_and_no_other_value(spark) -> None:
    """Touched P1 shares a value the cap cut with P2, which shares another with P3 (where it links): all three are
    resolved again. P4's cut value is its own, and P5 shares with P3 only a value no cap cut: both stay out."""
    held = spark.createDataFrame(
        [
            ("email", "v1", "P1", True),
            ("email", "v1", "P2", True),
            ("phone", "v2", "P2", True),
            ("phone", "v2", "P3", False),
            ("email", "v9", "P3", False),
            ("email", "v3", "P4", True),
            ("email", "v9", "P5", False),
        ],
        "id_type string, id_value string, previous_id string, capped boolean",
    )
    touched = spark.createDataFrame([("P1",)], "previous_id string")
    capped_values = held.where("capped").select("id_type", "id_value").distinct()

    closed = _close_over_capped(touched, held, capped_values, IdentitySettings())

    assert {row["previous_id"] for row in closed.collect()} == {"P1", "P2", "P3"}
    with pytest.raises(IdentityError, match="max_rounds"):
        _close_over_capped(touched, held, capped_values, IdentitySettings(max_rounds=1))
    nothing_capped = capped_values.limit(0)
    assert (
        _close_over_capped(touched, held, nothing_capped, IdentitySettings(max_rounds=1)).collect() == touched.collect()
    )


def test_the_same_input_twice_gives_the_same_ids_whichever_way_the_components_are_found(
    spark, resolved, components_way
) -> None:
    # ``resolved`` (module-scoped, so set up before the fixture that may force the rounds) found them in one task.
    again = resolve_identities(observations(spark, scenario_rows()), run_id="run-2", resolved_at=RESOLVED_AT)

    assert set(again.identity_map.collect()) == set(resolved.identity_map.collect())


def test_an_identifier_held_over_a_span_resolves_as_one_row_per_moment_would(spark) -> None:
    # Each record seen at its creation and again at an update three days later: two rows per identifier, or one
    # spanning both (how the customers transform observes its records), its ends given either way round, and a
    # span with one end missing as the moment it has.
    rows = scenario_rows()
    per_moment = observations(spark, [*rows, *((*row[:4], row[4] + 3) for row in rows[1:])])
    ends = [(day(row[4]), day(row[4] + 3))[:: 1 if index % 2 else -1] for index, row in enumerate(rows)]
    ends[0] = (None, day(rows[0][4]))
    spans = spark.createDataFrame(
        [(*row[:4], *ends[index]) for index, row in enumerate(rows)],
        "source string, record_id string, id_type string, id_value string, first_seen timestamp, last_seen timestamp",
    )

    def resolved_map(given):
        resolution = resolve_identities(given, run_id="run-1", resolved_at=RESOLVED_AT)
        return {tuple(row) for row in resolution.identity_map.collect()}

    by_span = resolved_map(spans)
    assert by_span == resolved_map(per_moment)
    assert {(row[0], row[5], row[6]) for row in by_span if row[0] == "email" and row[1] == "ann@x.io"} == {
        ("email", day(1).replace(tzinfo=None), day(4).replace(tzinfo=None)),  # Collected in the session's UTC.
        ("email", day(2).replace(tzinfo=None), day(5).replace(tzinfo=None)),
    }


def test_a_second_run_through_the_persisted_map_gives_the_people_of_one_run_and_the_older_id_survives_a_merge(
    spark, tmp_path, resolved
) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog = zone.open()
    rows = scenario_rows()
    # Run 2 brings Cat's Shopify record, which joins her Stripe record and her older Salesforce lead, and the
    # second half of the front desk: the first six records under its phone still link, all eleven may not.
    later = {"shopify:103", *(f"shopify:2{i:02d}" for i in range(6, 11))}
    first = [row for row in rows if row[1] not in later]
    rest = [row for row in rows if row[1] in later]

    run1 = resolve_identities(observations(spark, first), run_id="r1", resolved_at=RESOLVED_AT)
    commit_identity(catalog, "acme", run1, run_id="r1", raw_files=["acme/stripe/k1"])
    ids = {row["record_id"]: row["customer_id"] for row in run1.records.collect()}
    assert len({ids[f"shopify:2{i:02d}"] for i in range(6)}) == 1
    older, newer = ids["salesforce:00QC"], ids["stripe:cus_cat"]
    assert older != newer

    previous = load_identity_map(spark, catalog, "acme")
    run2 = resolve_identities(observations(spark, rest), run_id="r2", resolved_at=RESOLVED_AT, previous=previous)
    commit_identity(catalog, "acme", run2, run_id="r2", raw_files=["acme/shopify/k2"])

    assert people(run2) == people(resolved)
    after = {row["record_id"]: row["customer_id"] for row in run2.records.collect()}
    # The lead was seen first (day 1): its id survives, though a fresh id would hash Cat's email, the smallest node.
    assert {after["stripe:cus_cat"], after["shopify:103"], after["salesforce:00QC"]} == {older}
    assert after["stripe:cus_ann"] == ids["stripe:cus_ann"]
    recorded = read_table(spark, load_table(catalog, "acme", IDENTITY_MERGES_TABLE)).collect()
    assert [(row["survivor_id"], row["merged_id"], row["run_id"]) for row in recorded] == [(older, newer, "r2")]
    persisted = load_identity_map(spark, catalog, "acme")
    assert persisted is not None
    assert newer not in {row["customer_id"] for row in persisted.collect()}


def restated_through_the_map(
    spark, monkeypatch, previous, newer: list[Row]
) -> Iterator[tuple[IdentityScope, IdentityResolution]]:
    """``newer`` (records' new versions, restated) resolved through the ``previous`` map each way a run may: ALL, and
    TOUCHED with its few rows broadcast or (none counted as few) shuffled."""
    for scope, broadcast_rows in (
        (IdentityScope.ALL, frames.MAX_BROADCAST_ROWS),
        (IdentityScope.TOUCHED, frames.MAX_BROADCAST_ROWS),
        (IdentityScope.TOUCHED, 0),
    ):
        monkeypatch.setattr(frames, "MAX_BROADCAST_ROWS", broadcast_rows)
        observed = observations(spark, newer)
        yield (
            scope,
            resolve_identities(
                observed, run_id="r2", resolved_at=RESOLVED_AT, previous=previous, scope=scope, restated=observed
            ),
        )


def test_a_records_new_version_without_an_identifier_stops_linking_by_it_as_a_rebuild_would(
    spark, tmp_path, monkeypatch
) -> None:
    """Ann's Stripe record shares her email with a Shopify record; its next version has another email. A run through
    the persisted map must give the people of one run on the latest versions: two, no longer linked by the old email
    (found by benchmarks/transform_customers.py at 200,000 records: an incremental run kept such a link). A TOUCHED
    run sends its few changed rows to the map's tasks; with more than ``MAX_BROADCAST_ROWS`` it shuffles both: the
    same people either way."""
    catalog = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}").open()
    shopify = record("shopify", "shopify:101", {"shopify_customer": "101", "email": "ann@x.io"}, 2)
    first = [*record("stripe", "stripe:cus_ann", {"stripe_customer": "cus_ann", "email": "ann@x.io"}, 1), *shopify]
    newer = record("stripe", "stripe:cus_ann", {"stripe_customer": "cus_ann", "email": "ann.new@x.io"}, 3)
    run1 = resolve_identities(observations(spark, first), run_id="r1", resolved_at=RESOLVED_AT)
    commit_identity(catalog, "acme", run1, run_id="r1")
    assert people(run1) == {frozenset({"stripe:cus_ann", "shopify:101"})}
    previous = load_identity_map(spark, catalog, "acme")
    rebuilt = resolve_identities(observations(spark, [*shopify, *newer]), run_id="full", resolved_at=RESOLVED_AT)
    assert people(rebuilt) == {frozenset({"stripe:cus_ann"}), frozenset({"shopify:101"})}

    for scope, again in restated_through_the_map(spark, monkeypatch, previous, newer):
        assert people(again) == people(rebuilt), scope
        kept = {(row["record_id"], row["id_value"]) for row in again.identity_map.collect()}
        assert ("stripe:cus_ann", "ann@x.io") not in kept, scope
        assert {("stripe:cus_ann", "cus_ann"), ("stripe:cus_ann", "ann.new@x.io"), ("shopify:101", "ann@x.io")} <= kept

    # Not restated (an events record: each run says only what its new events said), the earlier email stays.
    gathered = resolve_identities(
        observations(spark, newer), run_id="r3", resolved_at=RESOLVED_AT, previous=previous, scope=IdentityScope.TOUCHED
    )
    assert people(gathered) == {frozenset({"stripe:cus_ann", "shopify:101"})}
    assert ("stripe:cus_ann", "ann@x.io") in {
        (row["record_id"], row["id_value"]) for row in gathered.identity_map.collect()
    }


def test_a_split_profile_keeps_its_id_in_the_part_holding_its_smallest_identifier(spark, tmp_path, monkeypatch) -> None:
    """Three records share a phone; the third's new version drops it, splitting the profile in two. Its id stays with
    the part holding the profile's smallest identifier (``email:ann@x.io``), even where the phone, the one identifier
    two records share, is not that part's smallest (found in review: components named by their shared identifiers
    alone gave the id to the other part)."""
    catalog = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}").open()
    phone = "+15550001000"
    ann = record("stripe", "stripe:s1", {"stripe_customer": "s1", "email": "ann@x.io", "phone": phone}, 1)
    shop = record("shopify", "shopify:2", {"shopify_customer": "2", "phone": phone}, 2)
    mia = record("salesforce", "salesforce:3", {"salesforce_contact": "3", "email": "mia@x.io", "phone": phone}, 3)
    first = resolve_identities(observations(spark, [*ann, *shop, *mia]), run_id="r1", resolved_at=RESOLVED_AT)
    commit_identity(catalog, "acme", first, run_id="r1")
    (profile,) = {row["customer_id"] for row in first.records.collect()}
    previous = load_identity_map(spark, catalog, "acme")
    newer = record("salesforce", "salesforce:3", {"salesforce_contact": "3", "email": "mia@x.io"}, 4)

    for scope, again in restated_through_the_map(spark, monkeypatch, previous, newer):
        ids = {row["record_id"]: row["customer_id"] for row in again.records.collect()}
        assert ids["stripe:s1"] == ids["shopify:2"] == profile, scope
        assert ids["salesforce:3"] != profile, scope


def _persisted_people(spark, catalog) -> set[frozenset[str]]:
    persisted = load_identity_map(spark, catalog, "acme")
    assert persisted is not None
    by_customer: dict[str, set[str]] = {}
    for row in persisted.select("customer_id", "record_id").collect():
        by_customer.setdefault(row["customer_id"], set()).add(row["record_id"])
    return {frozenset(members) for members in by_customer.values()}


def test_an_incremental_run_reaching_a_profile_the_cap_split_from_another_resolves_both_as_a_rebuild_would(
    spark, tmp_path
) -> None:
    """One email and one phone per profile. A, B and C form one component; the cap keeps its most recent email (A and
    B's) and phone (B's), so A and B stay one profile and C, whose email and phone were both cut, another. D then
    gives C's email a newer sighting. A rebuild links all four first, and the cap over that whole component now keeps
    C's email and cuts A and B's: people C+D, A, B. An incremental run must resolve A and B's profile too, which
    shares C's cut phone, not only C's (found by benchmarks/transform_customers.py at 200,000 records)."""
    one_each = IdTypeRules(max_values_per_profile=1)
    settings = IdentitySettings(types={"email": one_each, "phone": one_each})
    first = [
        *record("stripe", "a", {"email": "e1@x.io", "phone": "+15550000001"}, 1),
        *record("shopify", "b", {"email": "e1@x.io", "phone": "+15550000002"}, 3),
        *record("salesforce", "c", {"email": "e3@x.io", "phone": "+15550000001"}, 2),
    ]
    later = record("stripe", "d", {"email": "e3@x.io"}, 5)
    catalog = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}").open()
    run1 = resolve_identities(observations(spark, first), run_id="r1", resolved_at=RESOLVED_AT, settings=settings)
    assert people(run1) == {frozenset({"a", "b"}), frozenset({"c"})}
    commit_identity(catalog, "acme", run1, run_id="r1")
    rebuilt = resolve_identities(
        observations(spark, [*first, *later]), run_id="full", resolved_at=RESOLVED_AT, settings=settings
    )
    assert people(rebuilt) == {frozenset({"c", "d"}), frozenset({"a"}), frozenset({"b"})}

    previous = load_identity_map(spark, catalog, "acme")
    run2 = resolve_identities(
        observations(spark, later),
        run_id="r2",
        resolved_at=RESOLVED_AT,
        settings=settings,
        previous=previous,
        scope=IdentityScope.TOUCHED,
    )
    commit_identity(catalog, "acme", run2, run_id="r2")

    assert _persisted_people(spark, catalog) == people(rebuilt)


def test_survivorship_takes_the_most_recent_non_null_or_the_first_source_of_a_priority_list(spark) -> None:
    candidates = spark.createDataFrame(
        [
            ("c1", "stripe", day(5), "Ann", None, "FR"),
            ("c1", "shopify", day(3), "Anne", "+33100000001", "DE"),
            ("c1", "salesforce", day(9), None, "+33100000002", None),
            ("c2", "shopify", day(1), "Bob", None, "US"),
            ("c2", "stripe", day(1), "Robert", None, "US"),
        ],
        "customer_id string, source string, updated_at timestamp, first_name string, phone string, country string",
    )
    settings = SurvivorshipSettings(source_priority={"country": ["shopify", "salesforce"]})

    picked = survive_fields(candidates, ["first_name", "phone", "country"], settings)

    assert {row["customer_id"]: row.asDict() for row in picked.collect()} == {
        "c1": {"customer_id": "c1", "first_name": "Ann", "phone": "+33100000002", "country": "DE"},
        # Same time: the smallest source wins the tie.
        "c2": {"customer_id": "c2", "first_name": "Bob", "phone": None, "country": "US"},
    }


def test_bad_input_and_bad_settings_say_what_is_wrong(spark) -> None:
    with pytest.raises(IdentityError, match="observed_at"):
        resolve_identities(
            spark.createDataFrame([], "source string, record_id string, id_type string, id_value string"),
            run_id="x",
            resolved_at=RESOLVED_AT,
        )
    half_a_span = "source string, record_id string, id_type string, id_value string, first_seen timestamp"
    with pytest.raises(IdentityError, match=r"observed_at.*first_seen and last_seen in place of observed_at"):
        resolve_identities(spark.createDataFrame([], half_a_span), run_id="x", resolved_at=RESOLVED_AT)
    with pytest.raises(ConfigError, match="max_values_per_profile"):
        IdTypeRules(max_values_per_profile=0)
    with pytest.raises(ConfigError, match="source_priority"):
        survive_fields(
            spark.createDataFrame([], "customer_id string, source string, updated_at timestamp, a string"),
            ["a"],
            SurvivorshipSettings(source_priority={"b": ["stripe"]}),
        )
    assert IdentitySettings().rules("stripe_customer") == IdTypeRules()


def test_load_identity_map_is_none_before_the_first_commit(spark, tmp_path: Path) -> None:
    zone = ProcessedZone.resolve(str(tmp_path / "processed"), f"sqlite:///{tmp_path / 'catalog.db'}")
    assert load_identity_map(spark, zone.open(), "acme") is None
