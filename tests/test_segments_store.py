"""Segment storage and refresh on a real PostgreSQL: entered/left over changing data, static, delete, cron, overlap,
concurrency, a refresh failing half-way, and ``cdp segment`` end to end.

Each test module builds its own tenant from the shared fixture (tests/segments_support.py) because these tests change
the tenant's rows between refreshes; expected members come from plain SQL on the tables, written here by hand.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from activators.segments import store
from activators.segments.fields import MissingTableError
from activators.segments.model import SegmentDefinitionError, parse_segment
from plugins.cli.app import main
from plugins.connectors.testing import wait_until
from tests.segments_support import build_segment_tenant, processed_zone, segment_rows  # noqa: F401

DEADLINE_SECONDS = 30
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tenant_url(processed_zone, postgres_url, segment_rows) -> tuple[str, str]:  # noqa: F811
    """``(postgres_url, tenant)``: this module's own copy of the fixture tenant (its tests change rows)."""
    tenant = f"segstore{uuid.uuid4().hex[:8]}"
    build_segment_tenant(processed_zone, postgres_url, tenant, segment_rows)
    return postgres_url, tenant


@pytest.fixture
def conn(tenant_url) -> Iterator[psycopg.Connection[Any]]:
    connection = store.connect(tenant_url[0])
    yield connection
    connection.close()


@pytest.fixture
def tenant(tenant_url) -> str:
    return tenant_url[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def segment(name: str, criteria: list[dict[str, Any]], **extra: Any) -> Any:
    return parse_segment({"name": name, "criteria": criteria, **extra}, source="test")


def countries_segment(name: str, countries: list[str], **extra: Any) -> Any:
    return segment(name, [{"field": "country", "operator": "in", "value": countries}], **extra)


def table(tenant: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(tenant), sql.Identifier(name))


def ids(conn, query: sql.Composable, params: Any = None) -> set[str]:
    return {row[0] for row in conn.execute(query, params).fetchall()}


def in_countries(conn, tenant: str, countries: list[str]) -> set[str]:
    """The expected members, by hand."""
    return ids(
        conn,
        sql.SQL("SELECT customer_id FROM {} WHERE country = ANY(%s)").format(table(tenant, "customers")),
        (countries,),
    )


def members(conn, tenant: str, name: str) -> set[str]:
    return ids(
        conn,
        sql.SQL("SELECT customer_id FROM {} WHERE segment = %s").format(table(tenant, "segment_members")),
        (name,),
    )


def changes(conn, tenant: str, refresh_id: int, change: str) -> set[str]:
    return ids(
        conn,
        sql.SQL("SELECT customer_id FROM {} WHERE refresh_id = %s AND change = %s").format(
            table(tenant, "segment_member_changes")
        ),
        (refresh_id, change),
    )


def set_country(conn, tenant: str, customer_ids: list[str], country: str | None) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET country = %s WHERE customer_id = ANY(%s)").format(table(tenant, "customers")),
        (country, customer_ids),
    )


def test_schema_is_created_once_by_two_processes_at_once(tenant_url):
    url, _ = tenant_url
    fresh = f"segschema{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def create() -> None:
        with store.connect(url) as connection:
            barrier.wait(DEADLINE_SECONDS)
            try:
                store.ensure_schema(connection, fresh)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
    assert errors == []
    with store.connect(url) as connection:
        store.ensure_schema(connection, fresh)  # and again: idempotent
        found = ids(
            connection,
            sql.SQL("SELECT table_name FROM information_schema.tables WHERE table_schema = %s"),
            (fresh,),
        )
    assert found == {"segments", "segment_members", "segment_refreshes", "segment_member_changes"}


def test_entered_and_left_are_right_over_three_refreshes_of_changing_data(conn, tenant):
    name = unique("eu")
    countries = ["DE", "FR"]
    store.create(conn, tenant, countries_segment(name, countries))

    first = store.refresh(conn, tenant, name)
    expected = in_countries(conn, tenant, countries)
    assert len(expected) > 4
    assert (first.size, first.entered, first.left, first.engine) == (len(expected), len(expected), 0, "postgres")
    assert members(conn, tenant, name) == expected
    assert changes(conn, tenant, first.refresh_id, "entered") == expected

    # Two members leave, two outsiders enter.
    leaving = sorted(expected)[:2]
    outsiders = sorted(in_countries(conn, tenant, ["US"]))[:2]
    set_country(conn, tenant, leaving, "US")
    set_country(conn, tenant, outsiders, "DE")
    second = store.refresh(conn, tenant, name)
    assert second.refresh_id > first.refresh_id
    assert changes(conn, tenant, second.refresh_id, "entered") == set(outsiders)
    assert changes(conn, tenant, second.refresh_id, "left") == set(leaving)
    assert (second.entered, second.left) == (2, 2)
    assert members(conn, tenant, name) == in_countries(conn, tenant, countries)

    # One who left comes back, a member's row disappears (a customer erased), one gets no country at all.
    stay_gone = sorted(in_countries(conn, tenant, countries) - set(outsiders))
    conn.execute(sql.SQL("DELETE FROM {} WHERE customer_id = %s").format(table(tenant, "customers")), (stay_gone[0],))
    set_country(conn, tenant, [stay_gone[1]], None)
    set_country(conn, tenant, [leaving[0]], "FR")
    third = store.refresh(conn, tenant, name)
    assert changes(conn, tenant, third.refresh_id, "entered") == {leaving[0]}
    assert changes(conn, tenant, third.refresh_id, "left") == {stay_gone[0], stay_gone[1]}
    now_members = in_countries(conn, tenant, countries)
    assert members(conn, tenant, name) == now_members
    assert third.size == len(now_members) == first.size + 2 - 2 + 1 - 2

    # Each member carries the refresh it entered in; the segment and the refresh rows carry the counts.
    entered_in = dict(
        conn.execute(
            sql.SQL("SELECT customer_id, refresh_id FROM {} WHERE segment = %s").format(
                table(tenant, "segment_members")
            ),
            (name,),
        ).fetchall()
    )
    assert entered_in[leaving[0]] == third.refresh_id
    assert entered_in[outsiders[0]] == second.refresh_id
    stored = store.get(conn, tenant, name)
    assert (stored.size, stored.last_refresh_id) == (third.size, third.refresh_id)
    assert stored.last_refreshed is not None
    rows = conn.execute(
        sql.SQL(
            "SELECT refresh_id, size, entered_count, left_count, engine, finished_at >= started_at FROM {} "
            "WHERE segment = %s ORDER BY refresh_id"
        ).format(table(tenant, "segment_refreshes")),
        (name,),
    ).fetchall()
    assert rows == [
        (result.refresh_id, result.size, result.entered, result.left, "postgres", True)
        for result in (first, second, third)
    ]

    # Nothing changed: nothing entered or left.
    fourth = store.refresh(conn, tenant, name)
    assert (fourth.size, fourth.entered, fourth.left) == (third.size, 0, 0)


def test_static_segment_is_frozen_by_its_first_refresh(conn, tenant):
    name = unique("launch")
    store.create(conn, tenant, countries_segment(name, ["NL"], type="static"))
    assert name in store.due(conn, tenant, datetime.now(UTC))  # never refreshed: due, to be frozen
    first = store.refresh(conn, tenant, name)
    frozen = members(conn, tenant, name)
    assert frozen == in_countries(conn, tenant, ["NL"])
    set_country(conn, tenant, sorted(in_countries(conn, tenant, ["US"]))[:1], "NL")

    frozen_by = f"'{name}' is static.*frozen by refresh {first.refresh_id}"
    with pytest.raises(store.StaticSegmentFrozenError, match=frozen_by):
        store.refresh(conn, tenant, name)
    with pytest.raises(store.StaticSegmentFrozenError, match="define a new segment"):
        store.apply(conn, tenant, [countries_segment(name, ["NL", "DE"], type="static")])
    assert members(conn, tenant, name) == frozen
    assert name not in store.due(conn, tenant, datetime.now(UTC) + timedelta(days=400))
    assert store.apply(conn, tenant, [countries_segment(name, ["NL"], type="static")]).unchanged == [name]


def test_delete_removes_members_and_the_name_can_be_created_again(conn, tenant):
    name = unique("gone")
    store.create(conn, tenant, countries_segment(name, ["DE"]))
    first = store.refresh(conn, tenant, name)
    store.delete(conn, tenant, name)

    assert members(conn, tenant, name) == set()
    assert name not in [item.name for item in store.list_segments(conn, tenant)]
    assert name not in store.due(conn, tenant, datetime.now(UTC) + timedelta(days=1))
    for action in (
        lambda: store.get(conn, tenant, name),
        lambda: store.refresh(conn, tenant, name),
        lambda: store.delete(conn, tenant, name),
        lambda: store.overlap(conn, tenant, [name]),
    ):
        with pytest.raises(store.SegmentNotFoundError, match=f"no segment '{name}'"):
            action()
    # The refresh history stays (exports of it may be in use).
    assert changes(conn, tenant, first.refresh_id, "entered") == in_countries(conn, tenant, ["DE"])

    store.create(conn, tenant, countries_segment(name, ["FR"]))
    with pytest.raises(store.SegmentExistsError, match=f"segment '{name}' exists"):
        store.create(conn, tenant, countries_segment(name, ["FR"]))
    again = store.get(conn, tenant, name)
    assert (again.size, again.last_refresh_id, again.deleted_at) == (None, None, None)
    second = store.refresh(conn, tenant, name)
    assert (second.entered, second.left) == (second.size, 0)
    assert members(conn, tenant, name) == in_countries(conn, tenant, ["FR"])


def test_apply_creates_updates_and_keeps_segments_whose_file_is_gone(conn, tenant):
    first, second = unique("a"), unique("b")
    summary = store.apply(conn, tenant, [countries_segment(first, ["DE"]), countries_segment(second, ["FR"])])
    assert (summary.created, summary.updated, summary.unchanged) == (sorted([first, second]), [], [])

    summary = store.apply(conn, tenant, [countries_segment(first, ["DE", "NL"])])
    assert (summary.created, summary.updated, summary.unchanged) == ([], [first], [])
    assert second in summary.not_in_files
    assert store.get(conn, tenant, second).segment == countries_segment(second, ["FR"])  # kept, not deleted
    assert store.get(conn, tenant, first).segment == countries_segment(first, ["DE", "NL"])

    summary = store.apply(conn, tenant, [countries_segment(first, ["DE", "NL"])])
    assert summary.unchanged == [first]

    with pytest.raises(SegmentDefinitionError, match=f"segment '{first}' is defined twice"):
        store.apply(conn, tenant, [countries_segment(first, ["FR"]), countries_segment(first, ["NL"])])
    assert store.get(conn, tenant, first).segment == countries_segment(first, ["DE", "NL"])


def test_definitions_are_checked_at_apply_and_again_at_refresh(conn, tenant):
    bad = segment(unique("bad"), [{"field": "lifetime_valu", "operator": "gte", "value": 5}])
    with pytest.raises(SegmentDefinitionError, match=f"{bad.name}.*lifetime_valu") as raised:
        store.apply(conn, tenant, [countries_segment(unique("fine"), ["DE"]), bad])
    assert "\n" not in str(raised.value)
    assert [item.name for item in store.list_segments(conn, tenant) if item.name == bad.name] == []

    # A column the definition uses goes away after it was applied: the refresh says so and keeps the members.
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN tier text").format(table(tenant, "customers")))
    conn.execute(sql.SQL("UPDATE {} SET tier = 'gold' WHERE country = 'DE'").format(table(tenant, "customers")))
    name = unique("tier")
    store.create(conn, tenant, segment(name, [{"field": "tier", "operator": "equals", "value": "gold"}]))
    first = store.refresh(conn, tenant, name)
    assert first.size == len(in_countries(conn, tenant, ["DE"]))
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN tier").format(table(tenant, "customers")))
    with pytest.raises(SegmentDefinitionError, match=f"{name}.*tier") as raised:
        store.refresh(conn, tenant, name)
    assert "\n" not in str(raised.value)
    assert store.get(conn, tenant, name).last_refresh_id == first.refresh_id
    assert len(members(conn, tenant, name)) == first.size


def test_due_follows_each_segments_cron_in_utc(conn, tenant):
    daily, hourly, manual = unique("daily"), unique("hourly"), unique("manual")
    store.apply(
        conn,
        tenant,
        [
            countries_segment(daily, ["DE"], refresh_frequency="0 6 * * *"),
            countries_segment(hourly, ["DE"], refresh_frequency="0 * * * *"),
            countries_segment(manual, ["DE"]),
        ],
    )
    now = datetime.now(UTC)
    assert {daily, hourly, manual} <= set(store.due(conn, tenant, now))  # never refreshed: due
    for name in (daily, hourly, manual):
        store.refresh(conn, tenant, name)
    last = datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    conn.execute(
        sql.SQL("UPDATE {} SET last_refreshed = %s WHERE name = ANY(%s)").format(table(tenant, "segments")),
        (last, [daily, hourly, manual]),
    )
    # A session in another time zone reads last_refreshed in its own offset; the crons stay in UTC.
    conn.execute("SET TimeZone = 'America/New_York'")

    def due_at(moment: datetime) -> set[str]:
        return set(store.due(conn, tenant, moment)) & {daily, hourly, manual}

    assert due_at(datetime(2026, 3, 1, 7, 59, tzinfo=UTC)) == set()
    assert due_at(datetime(2026, 3, 1, 8, 0, tzinfo=UTC)) == {hourly}
    assert due_at(datetime(2026, 3, 2, 5, 59, tzinfo=UTC)) == {hourly}
    assert due_at(datetime(2026, 3, 2, 6, 0, tzinfo=UTC)) == {hourly, daily}
    with pytest.raises(ValueError, match="aware"):
        store.due(conn, tenant, datetime(2026, 3, 2, 6, 0))


def test_overlap_gives_every_intersection_like_python_sets(conn, tenant):
    names = [unique("de"), unique("de-fr"), unique("pro")]
    store.apply(
        conn,
        tenant,
        [
            countries_segment(names[0], ["DE"]),
            countries_segment(names[1], ["DE", "FR"]),
            segment(names[2], [{"field": "custom.plan", "operator": "equals", "value": "pro"}]),
        ],
    )
    for name in names:
        store.refresh(conn, tenant, name)
    sets = {name: members(conn, tenant, name) for name in names}
    assert all(sets.values())

    sizes = store.overlap(conn, tenant, names)
    expected = {
        (names[0],): len(sets[names[0]]),
        (names[1],): len(sets[names[1]]),
        (names[2],): len(sets[names[2]]),
        (names[0], names[1]): len(sets[names[0]] & sets[names[1]]),
        (names[0], names[2]): len(sets[names[0]] & sets[names[2]]),
        (names[1], names[2]): len(sets[names[1]] & sets[names[2]]),
        (names[0], names[1], names[2]): len(sets[names[0]] & sets[names[1]] & sets[names[2]]),
    }
    assert sizes == expected
    assert list(sizes) == list(expected)  # singles first, in the order given
    assert 0 < sizes[(names[1], names[2])] < sizes[(names[1],)]

    with pytest.raises(store.SegmentNotFoundError, match="no segment 'nope'"):
        store.overlap(conn, tenant, [names[0], "nope"])
    never = unique("never")
    store.create(conn, tenant, countries_segment(never, ["DE"]))
    with pytest.raises(store.SegmentStoreError, match=f"'{never}' was never refreshed"):
        store.overlap(conn, tenant, [names[0], never])


def test_two_refreshes_of_one_segment_at_once_end_consistent(tenant_url, conn, tenant):
    url = tenant_url[0]
    name = unique("busy")
    store.create(conn, tenant, countries_segment(name, ["DE", "NL"]))
    store.refresh(conn, tenant, name)
    set_country(conn, tenant, sorted(in_countries(conn, tenant, ["US"]))[:3], "NL")

    # Hold the segment's lock so both refreshes are queued on it before either runs.
    holder = store.connect(url)
    holder.execute("BEGIN")
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdp_segments:{tenant}:{name}",))
    results: list[store.RefreshResult] = []
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            with store.connect(url) as connection:
                results.append(store.refresh(connection, tenant, name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()

    def both_waiting() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        return row is not None and row[0] >= 2

    wait_until(both_waiting, DEADLINE_SECONDS, "both refreshes to wait on the segment's lock")
    holder.execute("COMMIT")
    holder.close()
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
    assert errors == []
    first, second = sorted(results, key=lambda result: result.refresh_id)
    assert (first.entered, first.left) == (3, 0)
    assert (second.entered, second.left, second.size) == (0, 0, first.size)
    assert members(conn, tenant, name) == in_countries(conn, tenant, ["DE", "NL"])
    assert store.get(conn, tenant, name).last_refresh_id == second.refresh_id


def test_refreshes_of_different_segments_do_not_wait_for_each_other(tenant_url, conn, tenant):
    url = tenant_url[0]
    running, other = unique("running"), unique("other")
    store.apply(conn, tenant, [countries_segment(running, ["DE"]), countries_segment(other, ["FR"])])
    # A refresh of `running` in the middle of its transaction: its lock and its writes to every segment table held.
    busy = store.connect(url)
    busy.execute("BEGIN")
    busy.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdp_segments:{tenant}:{running}",))
    for name in ("segment_refreshes", "segment_members", "segment_member_changes", "segments"):
        busy.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table(tenant, name)))
    try:
        conn.execute("SET lock_timeout = '5s'")  # a wait would fail the refresh below instead of hanging the test
        result = store.refresh(conn, tenant, other)
    finally:
        conn.execute("SET lock_timeout = 0")
        busy.execute("ROLLBACK")
        busy.close()
    assert result.size == len(in_countries(conn, tenant, ["FR"]))


def test_a_refresh_failing_after_the_members_statement_leaves_the_previous_members(conn, tenant):
    name = unique("fragile")
    store.create(conn, tenant, countries_segment(name, ["FR"]))
    first = store.refresh(conn, tenant, name)
    before = members(conn, tenant, name)
    set_country(conn, tenant, sorted(in_countries(conn, tenant, ["US"]))[:2], "FR")

    # A real failure half-way: the members are computed, then writing the changes raises in PostgreSQL.
    changes_table = table(tenant, "segment_member_changes")
    failing = table(tenant, "fail_changes")
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure while writing changes'; END $$"
        ).format(failing)
    )
    conn.execute(
        sql.SQL("CREATE TRIGGER fail_changes BEFORE INSERT ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
            changes_table, failing
        )
    )
    try:
        with pytest.raises(psycopg.errors.RaiseException, match="injected failure"):
            store.refresh(conn, tenant, name)
    finally:
        conn.execute(sql.SQL("DROP TRIGGER fail_changes ON {}").format(changes_table))
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(failing))

    assert members(conn, tenant, name) == before
    stored = store.get(conn, tenant, name)
    assert (stored.size, stored.last_refresh_id) == (first.size, first.refresh_id)
    refreshes = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE segment = %s").format(table(tenant, "segment_refreshes")), (name,)
    ).fetchone()
    assert refreshes == (1,)

    again = store.refresh(conn, tenant, name)
    assert (again.entered, again.left) == (2, 0)


def test_preview_counts_and_samples_without_storing_anything(conn, tenant):
    definition = countries_segment(unique("peek"), ["DE", "FR", "NL"])
    found = store.preview(conn, tenant, definition)
    expected = in_countries(conn, tenant, ["DE", "FR", "NL"])
    assert found.size == len(expected)
    assert len(found.sample) == min(10, len(expected))
    assert {row["customer_id"] for row in found.sample} <= expected
    assert {row["email"] for row in found.sample} <= {"***", None}
    assert definition.name not in [item.name for item in store.list_segments(conn, tenant)]


def test_a_tenant_without_loaded_tables_is_told_to_load_first(conn):
    missing = r"no customers table \(PostgreSQL schema 'empty\w+'\); run 'cdp load run"
    with pytest.raises(MissingTableError, match=missing):
        store.apply(conn, f"empty{uuid.uuid4().hex[:6]}", [countries_segment("x", ["DE"])])


# -- the CLI ---------------------------------------------------------------------------------------------------------


def cdp(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_definitions(folder: Path, *definitions: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for definition in definitions:
        (folder / f"{definition['name']}.yml").write_text(yaml.safe_dump(definition), encoding="utf-8")
    return folder


def test_cdp_segment_end_to_end(tenant_url, tmp_path, capsys, conn):
    url, tenant = tenant_url
    common = ["--tenant", tenant, "--postgres-url", url]
    eu, pro = unique("cli-eu"), unique("cli-pro")
    folder = write_definitions(
        tmp_path / "segments",
        {
            "name": eu,
            "description": "Customers in Germany and France, the two markets of the spring campaign, for email and ads",
            "criteria": [{"field": "country", "operator": "in", "value": ["DE", "FR"]}],
        },
        {
            "name": pro,
            "refresh_frequency": "0 * * * *",
            "criteria": [{"field": "custom.plan", "operator": "equals", "value": "pro"}],
        },
    )

    code, out, _ = cdp(capsys, "segment", "apply", str(folder), *common)
    assert code == 0
    assert f"created: 2: {min(eu, pro)}, {max(eu, pro)}" in out
    code, out, _ = cdp(capsys, "segment", "apply", str(folder / f"{eu}.yml"), *common, "--json")
    assert code == 0
    applied = json.loads(out)
    assert applied["unchanged"] == [eu]
    assert pro in applied["not_in_files"]

    code, out, _ = cdp(capsys, "segment", "preview", eu, *common)
    assert code == 0
    assert f"{eu}: {len(in_countries(conn, tenant, ['DE', 'FR']))} customers now (nothing stored)" in out
    assert "@example.org" not in out

    code, out, _ = cdp(capsys, "segment", "refresh", eu, *common, "--json")
    assert code == 0
    (refreshed,) = json.loads(out)["refreshes"]
    assert refreshed["segment"] == eu
    assert refreshed["entered"] == refreshed["size"] == len(in_countries(conn, tenant, ["DE", "FR"]))
    code, out, _ = cdp(capsys, "segment", "refresh", "--due", *common, "--json")
    assert code == 0
    assert pro in [item["segment"] for item in json.loads(out)["refreshes"]]
    assert eu not in [item["segment"] for item in json.loads(out)["refreshes"]]  # refreshed just now, no cron

    code, out, _ = cdp(capsys, "segment", "list", *common, "--json")
    listed = {item["name"]: item for item in json.loads(out)["segments"]}
    assert listed[eu]["size"] == refreshed["size"]
    assert listed[eu]["last_refresh_id"] == refreshed["refresh_id"]
    code, out, _ = cdp(capsys, "segment", "show", eu, *common, "--json")
    assert json.loads(out)["definition"]["criteria"][0]["field"] == "country"
    code, out, _ = cdp(capsys, "segment", "show", eu, *common)
    assert code == 0
    assert yaml.safe_load(out) == store.get(conn, tenant, eu).definition  # never wrapped at the terminal's width
    code, out, _ = cdp(capsys, "segment", "refresh", eu, *common)
    assert code == 0
    assert out.count("\n") == 1
    assert out.startswith(f"{eu}: refresh ")

    code, out, _ = cdp(capsys, "segment", "overlap", eu, pro, *common, "--json")
    assert code == 0
    overlaps = {tuple(item["segments"]): item["size"] for item in json.loads(out)["overlaps"]}
    assert overlaps == store.overlap(conn, tenant, [eu, pro])
    code, out, _ = cdp(capsys, "segment", "overlap", eu, pro, *common)
    assert f"{eu} ∩ {pro}" in out

    code, out, _ = cdp(capsys, "segment", "delete", pro, *common)
    assert (code, out.strip()) == (0, f"deleted {pro}")


def test_the_projects_example_segments_apply_and_preview(tenant_url, capsys):
    url, tenant = tenant_url
    common = ["--tenant", tenant, "--postgres-url", url]
    folder = REPO_ROOT / "segments"
    examples = ("demo-buyers", "high-value", "lapsed-buyers")
    assert sorted(path.name for path in folder.glob("*.yml")) == [f"{name}.yml" for name in examples]
    code, out, err = cdp(capsys, "segment", "apply", str(folder), *common, "--json")
    assert (code, err) == (0, "")
    assert set(json.loads(out)["created"]) | set(json.loads(out)["unchanged"]) == set(examples)
    for name in examples:
        code, out, err = cdp(capsys, "segment", "preview", name, *common, "--json")
        assert (code, err) == (0, "")
        assert json.loads(out)["segment"] == name


@pytest.mark.meltano
def test_meltano_applies_the_projects_segments_and_refreshes_the_due_ones(tenant_url, tmp_path, conn):
    from plugins.meltano.project import run_meltano

    url, _ = tenant_url
    # A tenant of its own: the segment-apply command applies the project's segments/ (names other tests use too).
    tenant = f"segmeltano{uuid.uuid4().hex[:6]}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(tenant)))
    conn.execute(
        sql.SQL("CREATE TABLE {} AS TABLE {}").format(table(tenant, "customers"), table(tenant_url[1], "customers"))
    )
    conn.execute(
        sql.SQL("CREATE TABLE {} AS TABLE {}").format(
            table(tenant, "customer_metrics"), table(tenant_url[1], "customer_metrics")
        )
    )
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / "meltano.yml", project / "meltano.yml")
    shutil.copytree(REPO_ROOT / "segments", project / "segments")
    # The cdp utility's settings reach cdp as CDP_<SETTING>: the tenant (dev says demo) and PostgreSQL.
    env = {"CDP_TENANT": tenant, "CDP_POSTGRES_URL": url}
    for command in ("cdp:segment-apply", "cdp:segment-refresh-due"):
        run_meltano(["invoke", command], project_root=project, extra_env=env, capture=True, timeout=240)
    stored = {item.name: item for item in store.list_segments(conn, tenant)}
    assert sorted(stored) == ["demo-buyers", "high-value", "lapsed-buyers"]
    assert all(item.last_refresh_id is not None for item in stored.values())


def test_refresh_due_goes_on_past_a_failing_segment(conn, tenant, tenant_url, capsys):
    url = tenant_url[0]
    broken, fine = unique("a-broken"), unique("b-fine")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN shortlived text").format(table(tenant, "customers")))
    store.apply(
        conn,
        tenant,
        [
            segment(broken, [{"field": "shortlived", "operator": "exists", "value": True}]),
            countries_segment(fine, ["DE"]),
        ],
    )
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN shortlived").format(table(tenant, "customers")))
    code, out, err = cdp(capsys, "segment", "refresh", "--due", "--tenant", tenant, "--postgres-url", url)
    assert code == 1
    assert f"{fine}: refresh " in out
    assert f"error: {broken}: " in err
    assert "shortlived" in err
    assert store.get(conn, tenant, fine).last_refresh_id is not None
    assert store.get(conn, tenant, broken).last_refresh_id is None


def test_cdp_segment_errors_are_one_line(tenant_url, tmp_path, capsys):
    url, tenant = tenant_url
    common = ["--tenant", tenant, "--postgres-url", url]

    code, _, err = cdp(capsys, "segment", "refresh", "no-such-segment", *common)
    assert code == 1
    assert err.strip() == (
        f"error: no segment 'no-such-segment' in tenant '{tenant}'; cdp segment list shows them, cdp segment apply "
        "adds them"
    )
    code, _, err = cdp(capsys, "segment", "list", "--tenant", "nobody", "--postgres-url", url)
    assert code == 0  # an empty list is fine before anything was loaded
    code, _, err = cdp(capsys, "segment", "refresh", "x", "--tenant", "nobody", "--postgres-url", url)
    assert (code, err.strip()) == (
        1,
        "error: no segment 'x' in tenant 'nobody'; cdp segment list shows them, cdp segment apply adds them",
    )
    with psycopg.connect(url) as connection:  # reads and misses created nothing
        found = connection.execute("SELECT to_regnamespace('nobody')").fetchone()
    assert found == (None,)
    folder = write_definitions(tmp_path / "s", {"name": "x", "criteria": []})
    code, _, err = cdp(capsys, "segment", "apply", str(folder), "--tenant", "nobody", "--postgres-url", url)
    assert code == 1
    assert err.strip() == "error: no customers table (PostgreSQL schema 'nobody'); run 'cdp load run --tenant nobody'"
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT to_regnamespace('nobody')").fetchone() == (None,)
    missing = f"postgresql://postgres@/postgres?host={tmp_path}/nowhere"
    code, _, err = cdp(capsys, "segment", "list", "--tenant", tenant, "--postgres-url", missing)
    assert code == 1
    assert err.startswith("error: cannot connect to PostgreSQL: ")
    assert err.strip().endswith("check --postgres-url or CDP_POSTGRES_URL")
    assert err.count("\n") == 1
    bad = write_definitions(tmp_path / "bad", {"name": "y", "criteria": [{"field": "nope", "operator": "equals"}]})
    code, _, err = cdp(capsys, "segment", "apply", str(bad), *common)
    assert code == 1
    assert err.count("\n") == 1
    assert "y" in err
    code, _, err = cdp(capsys, "segment", "refresh", *common)
    assert code == 2


def test_the_lake_engine_copies_its_ids_into_the_same_refresh(
    processed_zone,  # noqa: F811
    postgres_url,
    segment_rows,  # noqa: F811
    spark,
    capsys,
):
    tenant = f"seglake{uuid.uuid4().hex[:8]}"
    build_segment_tenant(processed_zone, postgres_url, tenant, segment_rows)
    name = unique("lake")
    definition = segment(
        name,
        [
            {"field": "country", "operator": "in", "value": ["DE", "FR", "NL"]},
            {"event": "page_viewed", "min_count": 1},
        ],
        logic="or",
    )
    with store.connect(postgres_url) as connection:
        store.create(connection, tenant, definition)
        lake = store.LakeEngine(zone=processed_zone, spark=spark)
        first = store.refresh(connection, tenant, name, engine="lake", lake=lake)
        expected = store.preview(connection, tenant, definition, sample=1000)
        assert first.engine == "lake"
        assert first.size == first.entered == expected.size > 0
        assert members(connection, tenant, name) == {row["customer_id"] for row in expected.sample}
        # The PostgreSQL engine on the same data finds the same members: nothing enters or leaves.
        second = store.refresh(connection, tenant, name)
        assert (second.size, second.entered, second.left) == (first.size, 0, 0)
        engines = connection.execute(
            sql.SQL("SELECT engine FROM {} WHERE segment = %s ORDER BY refresh_id").format(
                table(tenant, "segment_refreshes")
            ),
            (name,),
        ).fetchall()
        assert engines == [("lake",), ("postgres",)]
    # And from the command line, on the session's Spark.
    code, out, err = cdp(
        capsys,
        "segment",
        "refresh",
        name,
        "--engine",
        "lake",
        "--tenant",
        tenant,
        "--postgres-url",
        postgres_url,
        "--processed-url",
        processed_zone.warehouse,
        "--catalog-url",
        processed_zone.catalog_url,
        "--json",
    )
    assert (code, err) == (0, "")
    (third,) = json.loads(out)["refreshes"]
    assert (third["engine"], third["size"], third["entered"], third["left"]) == ("lake", first.size, 0, 0)
