"""customer_records and customers on real Spark, over raw batches landed by the real target-s3raw: normalisation of
the person-records; identity across providers (shared email, phone only, a chain of three, a later record merging
two profiles with the older id surviving, the front-desk phone that links nobody); incremental runs equal one full
run with the same ids; a full refresh keeps ids; erased people never come back; consent per channel, the most recent
statement winning; a crash between the identity map's commit and the profiles' heals on the next run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from plugins.transforms.catalog import ProcessedZone, load_table
from plugins.transforms.erasure import Tombstone, add_tombstones, erasure_table
from plugins.transforms.identity import IDENTITY_AUDIT_TABLE, IDENTITY_MERGES_TABLE, RULE_SHARED, load_identity_map
from plugins.transforms.normalize import reason_column
from plugins.transforms.run import TransformSettings
from plugins.transforms.runner import RunSummary, TableSummary, run_transforms
from plugins.transforms.table_reader import read_table
from tests.test_transforms_builtins import RawZone, tap_schema
from transforms.customer_records.transform import OUTPUT_COLUMNS as RECORD_COLUMNS
from transforms.customer_records.transform import customer_records
from transforms.customers.transform import OUTPUT_COLUMNS as CUSTOMER_COLUMNS

# Each module-scoped history runs the transforms five times: more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(1500)
FRONT_DESK = "+33140000000"
DAY = 86400
JAN_1 = 1767225600  # 2026-01-01T00:00:00Z


def salesforce_schema(*names: str, booleans: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Salesforce stream's schema as tap-salesforce's describe_schema builds it (strings, booleans, datetimes)."""
    properties: dict[str, Any] = {name: {"type": ["string", "null"]} for name in names}
    properties.update({name: {"type": ["boolean", "null"]} for name in booleans})
    properties["Id"] = {"type": "string"}
    for moment in ("CreatedDate", "SystemModstamp"):
        properties[moment] = {"type": ["string", "null"], "format": "date-time"}
    return {"type": "object", "properties": properties}


CONTACT = salesforce_schema(
    "FirstName", "LastName", "Name", "Email", "Phone", "MailingStreet", "MailingCity", "MailingState",
    "MailingPostalCode", "MailingCountry", "Preferred_Language__c",
    booleans=("HasOptedOutOfEmail", "DoNotCall"),
)  # fmt: skip
LEAD = salesforce_schema("FirstName", "LastName", "Name", "Email", "Phone", "Street", "City", "Country")


def iso(day: int) -> str:
    return datetime.fromtimestamp(JAN_1 + (day - 1) * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stripe_customer(customer_id: str, day: int, **fields: Any) -> dict[str, Any]:
    return {"id": customer_id, "object": "customer", "created": JAN_1 + (day - 1) * DAY, **fields}


def shopify_customer(number: int, day: int, *, email: str | None = None, phone: str | None = None, **fields: Any):
    record: dict[str, Any] = {"id": f"gid://shopify/Customer/{number}", "createdAt": iso(day), "updatedAt": iso(day)}
    if email is not None:
        record["defaultEmailAddress"] = {"emailAddress": email, "marketingState": "NOT_SUBSCRIBED"}
    if phone is not None:
        record["defaultPhoneNumber"] = {"phoneNumber": phone, "marketingState": "NOT_SUBSCRIBED"}
    return {**record, **fields}


def salesforce_record(record_id: str, day: int, **fields: Any) -> dict[str, Any]:
    return {"Id": record_id, "CreatedDate": iso(day), "SystemModstamp": iso(day), **fields}


@pytest.fixture
def zone(spark, tmp_path) -> RawZone:
    return RawZone(spark, tmp_path)


# -- customer_records -----------------------------------------------------------------------------------------------


def test_person_records_are_normalised_and_carry_their_consent_and_custom_fields(zone) -> None:
    zone.land(
        "stripe",
        "customers",
        tap_schema("stripe", "customers"),
        [stripe_customer("cus_1", 1, email=" Ann@X.IO ", phone="06 12 34 56 78", name="Ame\u0301lie Dupont",
                         address={"line1": "1 rue de Rivoli", "city": "Paris", "postal_code": "75001",
                                  "country": "fr"},
                         metadata={"tier": "gold"})],
    )  # fmt: skip
    shopify = tap_schema("shopify", "customers")
    zone.land("shopify", "customers", shopify, [shopify_customer(7, 1, email="zoe@x.io", firstName="Old")])
    zone.land(  # A later version of the same customer, with its marketing consent: the latest version wins.
        "shopify",
        "customers",
        shopify,
        [shopify_customer(7, 2, firstName="Zoe\u0308", lastName="Martin", dataSaleOptOut=True,
                          defaultEmailAddress={"emailAddress": "ZOE@x.io", "marketingState": "SUBSCRIBED"},
                          defaultPhoneNumber={"phoneNumber": "+1 212 555 0100", "marketingState": "UNSUBSCRIBED"},
                          defaultAddress={"address1": "5th Avenue", "city": "New York", "countryCodeV2": "US"},
                          metafields=[{"namespace": "custom", "key": "vip", "value": "true"}])],
    )  # fmt: skip
    zone.land(
        "salesforce",
        "Contact",
        CONTACT,
        [salesforce_record("003A", 3, FirstName="Hans", LastName="Müller", Email="hans@x.de", Phone="030 1234567",
                           MailingCountry="Germany", HasOptedOutOfEmail=True, DoNotCall=False,
                           Preferred_Language__c="de")],
        key="Id",
    )  # fmt: skip
    zone.land(
        "salesforce",
        "Lead",
        LEAD,
        [salesforce_record("00QA", 4, LastName="Nobody", Email="not-an-email", Phone="12", Country="Atlantis")],
        key="Id",
    )

    frame = customer_records(
        stripe_customers=zone.read("stripe", "customers"),
        shopify_customers=zone.read("shopify", "customers"),
        salesforce_contact=zone.read("salesforce", "Contact"),
        salesforce_lead=zone.read("salesforce", "Lead"),
    )
    rows = {row["record_id"]: row.asDict() for row in frame.collect()}

    assert [name for name in frame.columns if not name.startswith("_cdp_")] == list(RECORD_COLUMNS)
    assert set(rows) == {
        "stripe:customer:cus_1",
        "shopify:customer:gid://shopify/Customer/7",
        "salesforce:contact:003A",
        "salesforce:lead:00QA",
    }
    stripe = rows["stripe:customer:cus_1"]
    assert (stripe["source"], stripe["provider_id_type"], stripe["provider_id"]) == (
        "stripe/customers",
        "stripe_customer",
        "cus_1",
    )
    assert (stripe["email"], stripe["phone"], stripe["country"]) == ("ann@x.io", "+33612345678", "FR")
    assert stripe["full_name"] == "Amélie Dupont"
    assert len(stripe["full_name"]) == 13  # NFC: one composed é.
    assert (stripe["address_line1"], stripe["city"], stripe["postal_code"]) == ("1 rue de Rivoli", "Paris", "75001")
    assert stripe["custom_fields"] == '{"tier":"gold"}'
    assert stripe["created_at"] == datetime(2026, 1, 1)
    assert stripe["consent_email"] is None  # Stripe says nothing about marketing consent.
    shop = rows["shopify:customer:gid://shopify/Customer/7"]
    assert (shop["first_name"], shop["last_name"], shop["full_name"]) == ("Zoë", "Martin", "Zoë Martin")
    assert (shop["email"], shop["phone"], shop["country"]) == ("zoe@x.io", "+12125550100", "US")
    assert (shop["consent_email"], shop["consent_sms"], shop["consent_ads"]) == ("granted", "denied", "denied")
    assert shop["consent_email_at"] == datetime(2026, 1, 2)
    assert '"vip"' in shop["custom_fields"]
    assert shop["updated_at"] == datetime(2026, 1, 2)
    contact = rows["salesforce:contact:003A"]
    assert (contact["phone"], contact["country"]) == ("+49301234567", "DE")  # Read in the record's own country.
    assert (contact["consent_email"], contact["consent_sms"]) == ("denied", None)  # DoNotCall false says nothing.
    assert contact["custom_fields"] == '{"Preferred_Language__c":"de"}'
    lead = rows["salesforce:lead:00QA"]
    assert (lead["email"], lead["phone"], lead["country"]) == (None, None, None)
    assert lead[reason_column("email")].startswith("invalid email")
    assert lead[reason_column("phone")].startswith("invalid phone number")
    assert lead[reason_column("country")] == "unknown country"


# -- customers, end to end through the runner ----------------------------------------------------------------------


def land_half(zone: RawZone, half: int) -> None:
    """Half 1 holds each person's earliest record; half 2 brings the records that join them and later statements."""
    stripe, shopify = tap_schema("stripe", "customers"), tap_schema("shopify", "customers")
    if half == 1:
        zone.land(
            "stripe",
            "customers",
            stripe,
            [stripe_customer("cus_ann", 1, email=" Ann@X.io "), stripe_customer("cus_cat", 3, email="cat@x.io")],
        )
        zone.land(
            "shopify",
            "customers",
            shopify,
            [
                # Ann again, by email: she subscribed to email and SMS marketing on day 2.
                shopify_customer(101, 2, email="ann@x.io", phone="+33622222222",
                                 defaultEmailAddress={"emailAddress": "ann@x.io", "marketingState": "SUBSCRIBED"},
                                 defaultPhoneNumber={"phoneNumber": "+33622222222", "marketingState": "SUBSCRIBED"}),
                shopify_customer(102, 2, email="bob@a.io", phone="+33612345678"),
                # Eleven customers of a shop that entered its front-desk phone: more than the phone limit of 10.
                *(shopify_customer(200 + i, 5, email=f"d{i}@x.io", phone=FRONT_DESK) for i in range(11)),
            ],
        )  # fmt: skip
        # Bob again, by phone only, written the French way in a French address.
        zone.land(
            "salesforce",
            "Contact",
            CONTACT,
            [salesforce_record("003B", 4, LastName="Bob", Phone="06 12 34 56 78", MailingCountry="France")],
            key="Id",
        )
        # Cat's lead, seen first (day 1), shares only a phone with the Shopify record of half 2.
        zone.land(
            "salesforce",
            "Lead",
            LEAD,
            [salesforce_record("00QC", 1, LastName="Cat", Phone="+33 6 33 33 33 33")],
            key="Id",
        )
    else:
        # Cat's Shopify record: her Stripe email and her lead's phone, so Stripe - Shopify - Salesforce is one chain.
        zone.land("shopify", "customers", shopify, [shopify_customer(103, 6, email="cat@x.io", phone="+33633333333")])
        # Ann opted out of email in Salesforce on day 3, and unsubscribed from SMS on day 4 (an event).
        zone.land(
            "salesforce",
            "Contact",
            CONTACT,
            [salesforce_record("003A", 3, LastName="Ann", Email="ann@x.io", HasOptedOutOfEmail=True)],
            key="Id",
        )
        zone.land(
            "stripe",
            "events",
            tap_schema("stripe", "events"),
            [{"id": "evt_sms", "object": "event", "type": "customer.sms_unsubscribed", "created": JAN_1 + 3 * DAY,
              "data": {"object": {"id": "cus_ann", "object": "customer", "email": "ann@x.io"}}}],
        )  # fmt: skip


def descriptors() -> list[Any]:
    from transforms.customer_records import cdp_transforms as records
    from transforms.customers import cdp_transforms as profiles
    from transforms.events import cdp_transforms as events

    return [*records(), *events(), *profiles()]


def run(zone: RawZone, processed: Path, **options: Any) -> RunSummary:
    summary = run_transforms(
        tenants=["acme"],
        raw_url=f"{zone.base}/raw",
        dlq_url=f"{zone.base}/dlq",
        registry_url=f"{zone.base}/registry",
        processed_url=str(processed),
        transforms=descriptors(),
        settings=TransformSettings(default_region="FR"),
        **options,
    )
    failed = [table.error for table in summary.tables if table.status == "failed"]
    assert not failed, failed
    return summary


def by_table(summary: RunSummary) -> dict[str, TableSummary]:
    return {table.table: table for table in summary.tables}


def catalog_of(processed: Path) -> Any:
    return ProcessedZone.resolve(str(processed), None).open()


def profiles(spark, processed: Path) -> dict[str, dict[str, Any]]:
    table = load_table(catalog_of(processed), "acme", "customers")
    return {row["customer_id"]: row.asDict() for row in read_table(spark, table).drop("_cdp_data_file").collect()}


def person(profile: dict[str, Any]) -> frozenset[str]:
    """A profile as the provider records it holds (``stripe_customer:cus_ann``...)."""
    return frozenset(
        f"{id_type}:{value}"
        for id_type in ("stripe_customer", "shopify_customer", "salesforce_contact", "salesforce_lead")
        for value in profile[f"{id_type}_ids"]
    )


def people(table: dict[str, dict[str, Any]]) -> set[frozenset[str]]:
    return {person(profile) for profile in table.values()}


def owner(table: dict[str, dict[str, Any]], provider_id: str) -> dict[str, Any]:
    (found,) = [profile for profile in table.values() if provider_id in person(profile)]
    return found


ANN = frozenset({"stripe_customer:cus_ann", "shopify_customer:gid://shopify/Customer/101", "salesforce_contact:003A"})
BOB = frozenset({"shopify_customer:gid://shopify/Customer/102", "salesforce_contact:003B"})
CAT = frozenset({"stripe_customer:cus_cat", "shopify_customer:gid://shopify/Customer/103", "salesforce_lead:00QC"})
FRONT_DESK_PEOPLE = {frozenset({f"shopify_customer:gid://shopify/Customer/{200 + i}"}) for i in range(11)}


@contextmanager
def generated_code(spark: Any) -> Iterator[None]:
    """Spark's code generation as in production, for the shared session whose defaults file turns it off for a few
    rows (tests/spark_conf): whole-stage code, and expressions compiled with the interpreted ones as fallback."""
    production = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}
    before = {name: spark.conf.get(name) for name in production}
    for name, value in production.items():
        spark.conf.set(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            spark.conf.set(name, value)


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory) -> dict[str, Any]:
    """Two incremental runs over the halves and one full run from scratch over everything (and one more with Spark's
    generated code); then an erasure and a full refresh of the incremental tables: every state the tests below look
    at."""
    base = tmp_path_factory.mktemp("customers")
    zone, incremental, scratch = RawZone(spark, base), base / "incremental", base / "scratch"
    seen: dict[str, Any] = {}
    land_half(zone, 1)
    seen["run1"] = by_table(run(zone, incremental))
    seen["after1"] = profiles(spark, incremental)
    land_half(zone, 2)
    seen["run2"] = by_table(run(zone, incremental))
    seen["after2"] = profiles(spark, incremental)
    catalog = catalog_of(incremental)
    seen["merges"] = read_table(spark, load_table(catalog, "acme", IDENTITY_MERGES_TABLE)).collect()
    seen["audit"] = read_table(spark, load_table(catalog, "acme", IDENTITY_AUDIT_TABLE)).collect()
    run(zone, scratch, full_refresh=True)
    seen["scratch"] = profiles(spark, scratch)
    with generated_code(spark):
        run(zone, base / "compiled", full_refresh=True)
    seen["compiled"] = profiles(spark, base / "compiled")

    add_tombstones(spark, erasure_table(catalog, "acme"), [Tombstone.email("ANN@x.io ")])
    zone.land("stripe", "customers", tap_schema("stripe", "customers"), [stripe_customer("cus_new", 9)])
    seen["run3"] = by_table(run(zone, incremental))
    seen["erased"] = profiles(spark, incremental)
    identity_map = load_identity_map(spark, catalog, "acme")
    assert identity_map is not None
    seen["map_values"] = {row["id_value"] for row in identity_map.collect()}
    # Reprocessing every raw batch, the erased person's included.
    seen["refresh"] = by_table(run(zone, incremental, full_refresh=True))
    seen["refreshed"] = profiles(spark, incremental)
    return seen


def test_records_link_by_shared_email_phone_only_and_a_chain_across_three_providers(history) -> None:
    after = history["after2"]

    assert people(after) == {ANN, BOB, CAT, *FRONT_DESK_PEOPLE}
    assert list(next(iter(after.values()))) == list(CUSTOMER_COLUMNS)
    ann = owner(after, "stripe_customer:cus_ann")
    assert ann["emails"] == ["ann@x.io"]
    assert ann["sources"] == ["events", "salesforce/Contact", "shopify/customers", "stripe/customers"]
    assert ann["record_count"] == 3
    assert (ann["email"], ann["phone"]) == ("ann@x.io", "+33622222222")
    assert ann["first_seen"] == datetime(2026, 1, 1)
    bob = owner(after, "salesforce_contact:003B")
    assert bob["phones"] == ["+33612345678"]
    assert bob["last_name"] == "Bob"


def test_the_front_desk_phone_links_nobody_and_is_audited_and_counted(history) -> None:
    (cut,) = [row for row in history["audit"] if row["id_value"] == FRONT_DESK]

    assert (cut["rule"], cut["records_affected"]) == (RULE_SHARED, 11)
    assert history["run1"]["customers"].quality.counters["identity.shared_value"] == 1
    desk = owner(history["after2"], "shopify_customer:gid://shopify/Customer/200")
    assert desk["phones"] == [FRONT_DESK]  # Still the record's phone; it just links no one.


def test_a_later_record_merges_two_profiles_and_the_older_id_survives(history) -> None:
    before, after = history["after1"], history["after2"]
    lead_id = owner(before, "salesforce_lead:00QC")["customer_id"]
    stripe_id = owner(before, "stripe_customer:cus_cat")["customer_id"]

    assert lead_id != stripe_id  # Two profiles until Shopify's record joins them.
    assert owner(after, "stripe_customer:cus_cat")["customer_id"] == lead_id  # The lead was seen first (day 1).
    assert stripe_id not in after
    assert [(row["survivor_id"], row["merged_id"]) for row in history["merges"]] == [(lead_id, stripe_id)]
    assert history["run2"]["customers"].deleted == 1
    assert history["run2"]["customers"].quality.counters["identity.merged"] == 1
    for profile in before.values():  # Nobody else changed id.
        if profile["customer_id"] != stripe_id:
            assert profile["customer_id"] in after


def test_two_incremental_runs_equal_one_full_run_with_the_same_ids_and_a_full_refresh_keeps_them(history) -> None:
    assert history["after2"] == history["scratch"]
    # The suite runs Spark on interpreted expressions (tests/spark_conf); production's generated code agrees.
    assert history["compiled"] == history["scratch"]
    assert history["refreshed"] == history["erased"]  # Every id kept, every field the same.
    assert history["refresh"]["customers"].mode == "full-refresh"


def test_consent_per_channel_the_most_recent_statement_wins_events_included(history) -> None:
    before = owner(history["after1"], "stripe_customer:cus_ann")
    after = owner(history["after2"], "stripe_customer:cus_ann")

    assert (before["consent_email"], before["consent_sms"], before["consent_ads"]) == ("granted", "granted", "unknown")
    assert (after["consent_email"], after["consent_email_at"]) == ("denied", datetime(2026, 1, 3))  # Salesforce.
    assert (after["consent_sms"], after["consent_sms_at"]) == ("denied", datetime(2026, 1, 4))  # The event.
    assert (after["consent_ads"], after["consent_ads_at"]) == ("unknown", None)
    assert owner(history["after2"], "salesforce_contact:003B")["consent_email"] == "denied"  # NOT_SUBSCRIBED.
    assert owner(history["erased"], "stripe_customer:cus_new")["consent_email"] == "unknown"  # No one said.


def test_an_erased_email_never_comes_back(history) -> None:
    ann_id = owner(history["after2"], "stripe_customer:cus_ann")["customer_id"]

    for state in ("erased", "refreshed"):
        table = history[state]
        assert ann_id not in table
        assert not any("ann@x.io" in profile["emails"] for profile in table.values())
        assert people(table) == {BOB, CAT, *FRONT_DESK_PEOPLE, frozenset({"stripe_customer:cus_new"})}
    assert "ann@x.io" not in history["map_values"]
    assert "cus_ann" not in history["map_values"]  # Every record that held the address left the map.
    assert history["run3"]["customers"].deleted == 1


def test_a_crash_between_the_identity_commit_and_the_profiles_commit_heals_on_the_next_run(
    spark, tmp_path, monkeypatch
) -> None:
    import plugins.transforms.runner as runner

    zone, processed = RawZone(spark, tmp_path), tmp_path / "processed"
    stripe, shopify = tap_schema("stripe", "customers"), tap_schema("shopify", "customers")
    zone.land("stripe", "customers", stripe, [stripe_customer("cus_x", 1, email="x@x.io")])
    zone.land("shopify", "customers", shopify, [shopify_customer(9, 2, phone="+33644444444")])
    run(zone, processed)
    first = profiles(spark, processed)
    older = owner(first, "stripe_customer:cus_x")["customer_id"]
    newer = owner(first, "shopify_customer:gid://shopify/Customer/9")["customer_id"]
    zone.land("salesforce", "Contact", CONTACT, [salesforce_record("003X", 3, LastName="X", Email="x@x.io",
                                                                   Phone="+33644444444")], key="Id")  # fmt: skip

    real_commit = runner.commit_files

    def crash_on_customers(table: Any, **kwargs: Any) -> Any:
        if table.name()[-1] == "customers":
            raise RuntimeError("the machine stopped")
        return real_commit(table, **kwargs)

    monkeypatch.setattr(runner, "commit_files", crash_on_customers)
    with pytest.raises(RuntimeError, match="machine stopped"):
        run_transforms(
            tenants=["acme"], raw_url=f"{zone.base}/raw", dlq_url=f"{zone.base}/dlq",
            registry_url=f"{zone.base}/registry", processed_url=str(processed), transforms=descriptors(),
        )  # fmt: skip
    monkeypatch.setattr(runner, "commit_files", real_commit)
    # The identity map committed the merge; the customers table still holds both profiles.
    assert set(profiles(spark, processed)) == {older, newer}

    healed = by_table(run(zone, processed))["customers"]

    after = profiles(spark, processed)
    assert set(after) == {older}
    assert person(after[older]) == {
        "stripe_customer:cus_x",
        "shopify_customer:gid://shopify/Customer/9",
        "salesforce_contact:003X",
    }
    assert healed.deleted == 1


def test_each_profiles_snapshot_names_its_map_and_a_rolled_back_table_out_of_step_still_loses_merged_ids(
    spark, tmp_path
) -> None:
    """In step (the map unchanged since the profiles were built), the ids a run deletes are among the profiles it
    touched. Rolled back past a merge, the table holds an id the map lost in a profile no run touches again: the
    next run sees the map moved since the snapshot's and compares every id."""
    from plugins.transforms.identity import IDENTITY_MAP_TABLE
    from plugins.transforms.maintenance import rollback
    from plugins.transforms.runner import recorded_property
    from transforms.customers.transform import IDENTITY_MAP_SNAPSHOT_PROPERTY

    zone, processed = RawZone(spark, tmp_path), tmp_path / "processed"
    stripe, shopify = tap_schema("stripe", "customers"), tap_schema("shopify", "customers")
    zone.land("stripe", "customers", stripe, [stripe_customer("cus_x", 1, email="x@x.io")])
    zone.land("shopify", "customers", shopify, [shopify_customer(9, 2, phone="+33644444444")])
    before = by_table(run(zone, processed))["customers"]
    first = profiles(spark, processed)
    older = owner(first, "stripe_customer:cus_x")["customer_id"]
    newer = owner(first, "shopify_customer:gid://shopify/Customer/9")["customer_id"]
    zone.land("salesforce", "Contact", CONTACT, [salesforce_record("003X", 3, LastName="X", Email="x@x.io",
                                                                   Phone="+33644444444")], key="Id")  # fmt: skip
    merged = by_table(run(zone, processed))["customers"]
    assert (merged.deleted, set(profiles(spark, processed))) == (1, {older})

    catalog = catalog_of(processed)
    customers, identity_map = load_table(catalog, "acme", "customers"), load_table(catalog, "acme", IDENTITY_MAP_TABLE)
    assert recorded_property(customers, IDENTITY_MAP_SNAPSHOT_PROPERTY) == str(
        identity_map.current_snapshot().snapshot_id
    )
    assert before.snapshot_id is not None
    rollback(customers, before.snapshot_id)  # Both profiles again, and the snapshot names the map before the merge.
    assert set(profiles(spark, processed)) == {older, newer}
    zone.land("stripe", "customers", stripe, [stripe_customer("cus_x", 4, email="x@x.io")])  # Touches older only.

    healed = by_table(run(zone, processed))["customers"]

    assert (healed.deleted, set(profiles(spark, processed))) == (1, {older})


def test_both_register_through_the_cdp_entry_points_with_rules_and_erasure_keys_on_their_own_columns() -> None:
    from plugins.manager import create_plugin_manager, transforms

    ordered = {t.name: t for t in transforms(create_plugin_manager())}
    names = list(ordered)

    assert names.index("customer_records") < names.index("customers")
    assert names.index("events") < names.index("customers")
    for name, columns in (("customer_records", RECORD_COLUMNS), ("customers", CUSTOMER_COLUMNS)):
        descriptor = ordered[name]
        assert {rule.column for rule in descriptor.load_quality_rules()} <= set(columns)
        assert set(descriptor.key) <= set(columns)
        for key in descriptor.erasure_keys:
            assert {key.value_column, key.type_column or key.value_column} <= set(columns)
    assert ordered["customers"].partitioning == ["bucket(16, customer_id)"]
