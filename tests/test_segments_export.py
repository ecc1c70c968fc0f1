"""Audience exports (activators/segments/export.py) on real PostgreSQL, local and S3 (moto) exports.

Each test gets its own tenant: a dozen customers (with the customers transform's full set of columns), their metrics
in two currencies and one erasure table, written to the processed zone with pyiceberg and loaded by the real load
runner; the segment ``eu`` (DE or FR, money in EUR) is refreshed by the real store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest

from activators.segments import store
from activators.segments.export import (
    MANIFEST,
    ExportError,
    ExportRefusedError,
    UntrustedExportError,
    export_batches,
    export_refresh,
    export_table,
    read_export,
    refresh_prefix,
)
from activators.segments.model import parse_segment
from plugins.core.errors import ConfigError, StorageError
from plugins.core.storage import ObjectStore
from plugins.transforms.catalog import ProcessedZone, create_table
from tests.loading_support import commit
from tests.segments_support import DAY, SEGMENT_KEYS, _schemas, customer_id

SEGMENT = {
    "name": "eu",
    "description": "customers in Germany or France",
    "currency": "EUR",
    "criteria": [{"field": "country", "operator": "in", "value": ["DE", "FR"]}],
}
NOW = datetime.now(UTC).replace(microsecond=0)
#: A name CSV and Parquet must keep as it is: a quote, a comma, a newline, non-ASCII.
ODD_NAME = 'Zoë "Z", O\'Brien\nthe second'


def customer_schema() -> Any:
    from pyspark.sql.types import ArrayType, LongType, StringType, StructField, StructType, TimestampType

    text = StringType()
    columns = [
        ("customer_id", text),
        ("email", text),
        ("emails", ArrayType(text)),
        ("phone", text),
        ("phones", ArrayType(text)),
        ("first_name", text),
        ("last_name", text),
        ("full_name", text),
        ("address_line1", text),
        ("address_line2", text),
        ("city", text),
        ("region", text),
        ("postal_code", text),
        ("country", text),
        ("stripe_customer_ids", ArrayType(text)),
        ("shopify_customer_ids", ArrayType(text)),
        ("sources", ArrayType(text)),
        ("record_count", LongType()),
        *((f"consent_{channel}", text) for channel in ("email", "sms", "ads")),
        ("first_seen", TimestampType()),
        ("updated_at", TimestampType()),
    ]
    return StructType([StructField(name, kind) for name, kind in columns])


def person(n: int, country: str) -> dict[str, Any]:
    """Customer ``n``: 1 refused email, 2 never said (unknown), 3 has no consent at all, 4 refused SMS; 5, 6 and 7
    are erased (by a second email, by phone, by a Stripe id)."""
    email = f"person{n}@example.org"
    return {
        "customer_id": customer_id(n),
        "email": email,
        "emails": [email, f"second{n}@example.com"],
        "phone": f"+4915{n:08d}",
        "phones": [f"+4915{n:08d}"],
        "first_name": ODD_NAME if n == 0 else f"First{n}",
        "last_name": "" if n == 0 else (None if n == 3 else f"Last{n}"),
        "full_name": f"First{n} Last{n}",
        "address_line1": f"{n} Main Street",
        "address_line2": None,
        "city": "Berlin" if country == "DE" else "Paris",
        "region": None,
        "postal_code": f"{10000 + n}",
        "country": country,
        "stripe_customer_ids": [f"cus_stripe{n}"],
        "shopify_customer_ids": [],
        "sources": ["stripe"],
        "record_count": n + 1,
        "consent_email": {1: "denied", 2: "unknown", 3: None}.get(n, "granted"),
        "consent_sms": "denied" if n == 4 else "granted",
        "consent_ads": "granted",
        "first_seen": NOW - 100 * DAY,
        "updated_at": NOW - DAY,
    }


COUNTRIES = {n: "DE" for n in range(8)} | {8: "FR", 9: "US", 10: "US", 11: "US"}
ERASED = {5, 6, 7}


def metric(n: int, currency: str, value: str, orders: int, days_ago: int, score: float) -> dict[str, Any]:
    last = NOW - days_ago * DAY
    return {
        "customer_id": customer_id(n),
        "currency": currency,
        "lifetime_value": Decimal(value),
        "order_count": orders,
        "average_order_value": (Decimal(value) / orders).quantize(Decimal("0.000000001")),
        "first_order_at": last - 30 * DAY,
        "last_order_at": last,
        "days_since_last_order": days_ago,
        "events_90d": 1,
        "engagement_score": score,
        "computed_at": NOW,
    }


#: Customer 0 bought in EUR and USD (the EUR values are the export's; counts and dates combine both), 1 only in USD.
METRICS = [
    metric(0, "EUR", "120.500000000", 2, 10, 40.0),
    metric(0, "USD", "99.000000000", 3, 4, 55.5),
    metric(1, "USD", "10.000000000", 1, 50, 1.0),
    *(metric(n, "EUR", f"{n}0.000000000", 1, n, float(n)) for n in range(2, 12)),
]


@pytest.fixture
def zone(tmp_path: Path) -> ProcessedZone:
    """A local processed zone (warehouse folder and SQLite catalog) of the test's own."""
    (tmp_path / "warehouse").mkdir()
    return ProcessedZone((tmp_path / "warehouse").as_uri(), f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture
def tenant(zone: ProcessedZone, postgres_url: str) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """``(tenant, connection, {table: data file})``: the tenant loaded, its erasures written, the segment applied."""
    from pyspark.sql.types import StringType, StructField, StructType, TimestampType

    name = f"exp{uuid.uuid4().hex[:8]}"
    catalog = zone.open()
    files = {
        "customers": commit(
            create_table(catalog, name, "customers", customer_schema()),
            [person(n, country) for n, country in COUNTRIES.items()],
        )[1],
        "customer_metrics": commit(
            create_table(catalog, name, "customer_metrics", _schemas()["customer_metrics"]), METRICS
        )[1],
    }
    commit(create_table(catalog, name, "customer_events", _schemas()["customer_events"]), [])
    erasures = StructType(
        [
            StructField("id_type", StringType()),
            StructField("id_value", StringType()),
            StructField("erased_at", TimestampType()),
        ]
    )
    tombstones = [
        ("email", "second5@example.com"),
        ("phone", "+4915" + "6".zfill(8)),
        ("stripe_customer", "cus_stripe7"),
    ]
    commit(
        create_table(catalog, name, "erasures", erasures),
        [{"id_type": kind, "id_value": value, "erased_at": NOW} for kind, value in tombstones],
    )
    load(catalog, name, postgres_url)
    conn = store.connect(postgres_url)
    store.apply(conn, name, [parse_segment(SEGMENT)])
    try:
        yield name, conn, files
    finally:
        conn.close()


def load(catalog: Any, tenant: str, postgres_url: str) -> None:
    from loaders.postgres.loader import PostgresLoader
    from plugins.loaders.runner import load_tables

    with PostgresLoader(postgres_url) as loader:
        load_tables(
            catalog, {"postgres": loader}, SEGMENT_KEYS, tenants=[tenant], tables=["customers", "customer_metrics"]
        )


def rows_of(manifest: Any, kind: str, exports_url: str) -> list[dict[str, Any]]:
    rows = export_table(manifest, kind, exports_url).to_pylist()
    batches = list(export_batches(manifest, kind, exports_url))
    assert rows == (pa.Table.from_batches(batches).to_pylist() if batches else [])
    return rows


def members(conn: Any, tenant: str) -> set[str]:
    rows = conn.execute(f'SELECT customer_id FROM "{tenant}".segment_members WHERE segment = %s', ("eu",)).fetchall()
    return {row[0] for row in rows}


def changes(conn: Any, tenant: str, refresh_id: int, change: str) -> set[str]:
    rows = conn.execute(
        f'SELECT customer_id FROM "{tenant}".segment_member_changes WHERE refresh_id = %s AND change = %s',
        (refresh_id, change),
    ).fetchall()
    return {row[0] for row in rows}


def ids(*numbers: int) -> list[str]:
    return sorted(customer_id(n) for n in numbers)


def test_export_rows_are_the_members_with_their_personalisation_columns(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    store_url: str,
) -> None:
    name, conn, _ = tenant
    refreshed = store.refresh(conn, name, "eu")
    manifest = export_refresh(
        conn, name, "eu", refreshed.refresh_id, store_url, channel="email", part_rows=2, processed=zone
    )

    found = read_export(store_url, name, "eu", refreshed.refresh_id)
    assert found.to_json() == manifest.to_json()
    rows = rows_of(found, "members", store_url)
    # Members 0..8 less the refused (1) and the erased (5, 6, 7); opt-out keeps "unknown" (2) and no consent (3).
    assert members(conn, name) == set(ids(*range(9)))
    assert [row["customer_id"] for row in rows] == ids(0, 2, 3, 4, 8)
    assert [part.rows for part in found.parts["members"]] == [2, 2, 1]
    assert [part.path for part in found.parts["members"]][-1] == "members/part-00002.parquet"
    assert found.counts == {
        "members": 5,
        "entered": 5,
        "left": 0,
        "excluded_consent": 1,
        "excluded_erased": 3,
        "excluded_no_profile": 0,
    }
    first = rows[0]
    assert first == {
        "customer_id": customer_id(0),
        "email": "person0@example.org",
        "phone": "+491500000000",
        "first_name": ODD_NAME,
        "last_name": "",
        "full_name": "First0 Last0",
        "city": "Berlin",
        "region": None,
        "postal_code": "10000",
        "country": "DE",
        "consent_email": "granted",
        "currency": "EUR",
        "lifetime_value": Decimal("120.500000000"),
        "average_order_value": Decimal("60.250000000"),
        "order_count": 5,
        "last_order_at": NOW - 4 * DAY,
        "days_since_last_order": 4,
        "engagement_score": 55.5,
    }
    by_id = {row["customer_id"]: row for row in rows}
    assert by_id[customer_id(3)]["last_name"] is None
    assert by_id[customer_id(3)]["consent_email"] is None
    assert by_id[customer_id(8)]["lifetime_value"] == Decimal("80.000000000")
    assert [column["name"] for column in found.schema["left"]] == [
        "customer_id", "email", "phone", "first_name", "last_name", "full_name", "country"
    ]  # fmt: skip
    assert found.channel == "email"
    assert found.consent_mode == "opt-out"
    assert found.refresh_id == refreshed.refresh_id
    assert found.loaded_snapshots.keys() == {"customers", "customer_metrics"}
    assert found.postgres_snapshot


def test_entered_and_left_parts_are_the_refresh_changes(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    name, conn, files = tenant
    store.refresh(conn, name, "eu")
    # 8 moves to the US (leaves), 9 to Germany (enters), erased 5 moves to the US (leaves: only its id is exported).
    moved = COUNTRIES | {5: "US", 8: "US", 9: "DE"}
    catalog = zone.open()
    table = catalog.load_table((name, "customers"))
    commit(table, [person(n, country) for n, country in moved.items()], remove=[files["customers"]])
    load(catalog, name, postgres_url)
    second = store.refresh(conn, name, "eu")
    exports = str(tmp_path / "exports")

    manifest = export_refresh(conn, name, "eu", None, exports, channel="email", processed=zone)

    assert manifest.refresh_id == second.refresh_id
    assert changes(conn, name, second.refresh_id, "entered") == {customer_id(9)}
    assert changes(conn, name, second.refresh_id, "left") == {customer_id(5), customer_id(8)}
    entered = rows_of(manifest, "entered", exports)
    assert [row["customer_id"] for row in entered] == ids(9)
    assert entered[0]["lifetime_value"] == Decimal("90.000000000")
    assert entered[0]["country"] == "DE"
    left = rows_of(manifest, "left", exports)
    assert [row["customer_id"] for row in left] == ids(5, 8)
    assert left[0] == {"customer_id": customer_id(5), **dict.fromkeys(["email", "phone", "first_name", "last_name",
                                                                         "full_name", "country"])}  # fmt: skip
    assert left[1]["email"] == "person8@example.org"
    assert left[1]["country"] == "US"
    assert manifest.counts["entered"] == 1
    assert manifest.counts["left"] == 2
    assert manifest.counts["excluded_erased"] == 2  # 6 and 7; 5 left


def test_opt_in_exports_only_granted_and_the_channel_decides(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, conn, _ = tenant
    refresh_id = store.refresh(conn, name, "eu").refresh_id
    monkeypatch.setenv("CDP_CONSENT_MODE", "opt-in")
    email = export_refresh(conn, name, "eu", refresh_id, str(tmp_path / "a"), channel="email", processed=zone)
    assert [row["customer_id"] for row in rows_of(email, "members", str(tmp_path / "a"))] == ids(0, 4, 8)
    assert email.consent_mode == "opt-in"
    assert (email.counts["excluded_consent"], email.counts["excluded_erased"]) == (3, 3)

    sms = export_refresh(
        conn,
        name,
        "eu",
        refresh_id,
        str(tmp_path / "b"),
        channel="sms",
        processed=zone,
        consent_mode="opt-out",
    )
    rows = rows_of(sms, "members", str(tmp_path / "b"))
    assert [row["customer_id"] for row in rows] == ids(0, 1, 2, 3, 8)
    assert "consent_sms" in rows[0]
    assert "consent_email" not in rows[0]
    assert (sms.counts["excluded_consent"], sms.counts["excluded_erased"]) == (1, 3)

    with pytest.raises(ConfigError, match="'fax' is not a channel; use email, sms, ads"):
        export_refresh(conn, name, "eu", refresh_id, str(tmp_path / "c"), channel="fax", processed=zone)


def test_extra_columns_come_from_the_catalogue(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    tmp_path: Path,
) -> None:
    name, conn, _ = tenant
    refresh_id = store.refresh(conn, name, "eu").refresh_id
    exports = str(tmp_path / "exports")
    manifest = export_refresh(
        conn, name, "eu", refresh_id, exports, channel="ads", processed=zone,
        columns=["record_count", "sources", "email"],
    )  # fmt: skip
    row = rows_of(manifest, "members", exports)[0]
    assert (row["record_count"], json.loads(row["sources"])) == (1, ["stripe"])
    assert list(row)[-2:] == ["record_count", "sources"]
    with pytest.raises(ExportError, match="unknown field 'record_cout'; did you mean 'record_count'"):
        export_refresh(conn, name, "eu", refresh_id, exports, channel="ads", processed=zone,
                       columns=["record_cout"])  # fmt: skip
    with pytest.raises(ExportError, match="not a column of customers"):
        export_refresh(conn, name, "eu", refresh_id, exports, channel="ads", processed=zone,
                       columns=["order_count"])  # fmt: skip


def test_a_crash_before_the_manifest_leaves_no_trusted_export(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    store_url: str,
) -> None:
    name, conn, _ = tenant
    refresh_id = store.refresh(conn, name, "eu").refresh_id
    exports = ObjectStore(store_url)
    prefix = refresh_prefix(name, "eu", refresh_id)
    if exports.is_s3:
        # The bucket goes away: the export's writes fail.
        boto3.client("s3", endpoint_url=exports.s3_endpoint_url).delete_bucket(Bucket=exports.bucket)
    else:
        # A folder where the manifest goes: every part is written, then the manifest's rename fails.
        exports.local_path(f"{prefix}/{MANIFEST}/blocked").mkdir(parents=True)

    with pytest.raises(StorageError):
        export_refresh(conn, name, "eu", refresh_id, store_url, channel="email", part_rows=2, processed=zone)

    if not exports.is_s3:
        assert exports.exists(f"{prefix}/members/part-00000.parquet")  # the parts were there, not trusted
    with pytest.raises(UntrustedExportError, match=f"no export of refresh {refresh_id} of 'eu'.*no _manifest.json"):
        read_export(store_url, name, "eu", refresh_id)


def test_a_re_export_is_identical_and_another_channel_is_refused(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    store_url: str,
) -> None:
    name, conn, _ = tenant
    refresh_id = store.refresh(conn, name, "eu").refresh_id
    first = export_refresh(conn, name, "eu", refresh_id, store_url, channel="email", part_rows=2, processed=zone)
    again = export_refresh(conn, name, "eu", refresh_id, store_url, channel="email", part_rows=2, processed=zone)
    assert again.parts == first.parts
    assert again.counts == first.counts

    with pytest.raises(ExportRefusedError, match=f"^refresh {refresh_id} was exported for email; refresh again$"):
        export_refresh(conn, name, "eu", refresh_id, store_url, channel="sms", processed=zone)

    # Fewer, larger parts: the ones this export did not write are gone.
    fewer = export_refresh(conn, name, "eu", refresh_id, store_url, channel="email", processed=zone)
    exports = ObjectStore(store_url)
    prefix = refresh_prefix(name, "eu", refresh_id)
    kept = sorted(info.key.removeprefix(f"{prefix}/") for info in exports.list(prefix))
    expected = sorted([MANIFEST, *(part.path for parts in fewer.parts.values() for part in parts)])
    assert (
        kept == expected == [MANIFEST, *sorted(f"{kind}/part-00000.parquet" for kind in ("members", "entered", "left"))]
    )

    exports.write_bytes(f"{prefix}/members/part-00000.parquet", b"not the exported rows")
    with pytest.raises(UntrustedExportError, match=r"members/part-00000\.parquet does not match its checksum"):
        read_export(store_url, name, "eu", refresh_id)


def test_only_the_latest_refresh_is_exported(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    tmp_path: Path,
) -> None:
    name, conn, _ = tenant
    first = store.refresh(conn, name, "eu").refresh_id
    second = store.refresh(conn, name, "eu").refresh_id
    with pytest.raises(ExportRefusedError, match=rf"^refresh {first} is not the latest \({second}\); refresh again$"):
        export_refresh(conn, name, "eu", first, str(tmp_path), channel="email", processed=zone)
    store.apply(conn, name, [parse_segment({**SEGMENT, "name": "fresh"})])
    with pytest.raises(ExportError, match=r"^segment 'fresh' was never refreshed; run cdp segment refresh fresh$"):
        export_refresh(conn, name, "fresh", None, str(tmp_path), channel="email", processed=zone)


def test_cli_export_and_refresh_with_export(
    tenant: tuple[str, Any, dict[str, str]],
    zone: ProcessedZone,
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from plugins.cli.app import main

    name, _, _ = tenant
    exports = str(tmp_path / "exports")
    common = ["--tenant", name, "--postgres-url", postgres_url, "--exports-url", exports]
    common += ["--processed-url", zone.warehouse, "--catalog-url", zone.catalog_url]

    assert main(["segment", "refresh", "eu", "--export", "email", "--json", *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    refresh_id = summary["refreshes"][0]["refresh_id"]
    assert summary["exports"][0]["counts"]["members"] == 5
    assert read_export(exports, name, "eu", refresh_id).channel == "email"

    assert main(["segment", "export", "eu", "--channel", "email", "--part-rows", "2", "--columns", "city,record_count",
                 *common]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"eu: refresh {refresh_id} exported for email (opt-out): 5 members" in " ".join(out.split())
    exported = read_export(exports, name, "eu", refresh_id)
    assert len(exported.parts["members"]) == 3
    assert exported.schema["members"][-1]["name"] == "record_count"

    assert main(["segment", "export", "eu", "--channel", "sms", "--refresh-id", str(refresh_id), *common]) == 1
    assert capsys.readouterr().err.strip() == f"error: refresh {refresh_id} was exported for email; refresh again"


def test_an_empty_audience_has_one_empty_part_per_kind_with_its_schema(
    tenant: tuple[str, Any, dict[str, str]], zone: ProcessedZone, tmp_path: Path
) -> None:
    name, conn, _ = tenant
    nobody = {**SEGMENT, "name": "nobody", "criteria": [{"field": "country", "operator": "equals", "value": "JP"}]}
    store.apply(conn, name, [parse_segment(nobody)])
    refresh_id = store.refresh(conn, name, "nobody").refresh_id
    exports = str(tmp_path / "exports")
    manifest = export_refresh(conn, name, "nobody", refresh_id, exports, channel="email", processed=zone)
    assert {kind: [part.rows for part in parts] for kind, parts in manifest.parts.items()} == {
        "members": [0], "entered": [0], "left": [0]
    }  # fmt: skip
    members = export_table(read_export(exports, name, "nobody", refresh_id), "members", exports)
    assert members.num_rows == 0
    assert members.schema.field("lifetime_value").type == pa.decimal128(38, 9)
    assert members.schema.field("last_order_at").type == pa.timestamp("us", tz="UTC")
