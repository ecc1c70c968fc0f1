"""The ``customers`` table: one unified profile per person, under a ``customer_id`` that stays the same across runs.

Identity resolution (``plugins/transforms/identity.py``) links the ``customer_records`` (and the customer ids and
emails that ``events`` carry) into people; this transform feeds it the changed rows, commits the identity map, and
builds the profiles of the people a run affected: each field by survivorship over all their records, their custom
fields merged per key in the same order, their identifiers, their sources and their consent per channel (the most
recent statement winning, events' unsubscribes included). Merged-away ids, and ids the map no longer holds, come out
as deleted keys.

Crash safety: the identity tables commit inside this function, before the runner commits ``customers``. Should the
run stop in between, the next run is given the same changed rows again (the runner records what ``customers`` read
in ``customers``' own snapshot), touches the same profiles and rebuilds them. Each ``customers`` snapshot records the
identity map snapshot its profiles come from (``identity-map-snapshot``). When the map has not moved since, the ids
it loses are among the profiles this run touched, so those are the deleted keys. Otherwise (a run stopped between
the two commits, a rollback of either table, a compaction of the map) the deleted keys are every ``customer_id`` of
the ``customers`` table that the identity map no longer holds, so a merge whose profile deletion was lost still comes
out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.transforms.catalog import table_identifier
from plugins.transforms.consent import CHANNELS, event_statements, latest_consent
from plugins.transforms.erasure import ERASURES_TABLE, read_tombstones
from plugins.transforms.frames import broadcast_if, is_few, materialise, union_all
from plugins.transforms.identity import (
    RULE_BLOCKED,
    RULE_PROFILE_CAP,
    RULE_SHARED,
    IdentityResolution,
    IdentityScope,
    commit_identity,
    identity_map_snapshot,
    load_identity_map,
    resolve_identities,
    survive_fields,
)
from plugins.transforms.person_columns import ADDRESS_COLUMNS, CONSENT_COLUMNS, NAME_COLUMNS, PROVIDER_ID_TYPES
from plugins.transforms.quality import Allowed, Format, QualityRule, Range, Required
from plugins.transforms.run import TransformOutput

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from plugins.transforms.run import TransformRun

CONSENT_STATES = ("granted", "denied", "unknown")
#: The fields survivorship picks; ``run.settings.survivorship.source_priority`` may name any of them.
SURVIVING_FIELDS = ("email", "phone", "name", "address", "country")
EVENTS_SOURCE = "events"
CUSTOM_FIELD_KEY = "_cdp_custom_field"  # (customer_id, key): what a custom field's value survives per.
#: ``customers``' own snapshot property: the identity map snapshot its profiles were built from.
IDENTITY_MAP_SNAPSHOT_PROPERTY = "identity-map-snapshot"
OUTPUT_COLUMNS = (
    "customer_id",
    "email",
    "emails",
    "phone",
    "phones",
    *NAME_COLUMNS,
    *ADDRESS_COLUMNS,
    *(f"{id_type}_ids" for id_type in PROVIDER_ID_TYPES),
    "sources",
    "record_count",
    "custom_fields",
    *CONSENT_COLUMNS,
    "first_seen",
    "updated_at",
)
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("customer_id"),
    Format("customer_id", "^cus_[0-9a-f]{24}$"),
    Format("country", "^[A-Z]{2}$"),
    Range("record_count", minimum=0),
    *(Allowed(f"consent_{channel}", CONSENT_STATES) for channel in CHANNELS),
)


def record_observations(records: DataFrame) -> DataFrame:
    """Identity observations of ``customer_records`` rows: the provider id, email and phone of each record, each
    held from its creation to its last update (so ``first_seen`` is its creation whatever version came first). One
    row per identifier, spanning both moments: half the rows that identity resolution shuffles of one per moment."""
    from pyspark.sql import functions as F

    identifiers = F.array(
        F.struct(F.col("provider_id_type").alias("id_type"), F.col("provider_id").alias("id_value")),
        F.struct(F.lit("email").alias("id_type"), F.col("email").alias("id_value")),
        F.struct(F.lit("phone").alias("id_type"), F.col("phone").alias("id_value")),
    )
    per_identifier = records.select(
        "source",
        "record_id",
        F.col("created_at").alias("first_seen"),  # Identity orders a span's ends and fills a missing one.
        F.col("updated_at").alias("last_seen"),
        F.explode(identifiers).alias("i"),
    )
    return per_identifier.select("source", "record_id", "i.id_type", "i.id_value", "first_seen", "last_seen").where(
        F.col("id_value").isNotNull()
    )


def event_observations(events: DataFrame) -> DataFrame:
    """Identity observations of ``events`` rows: what the events say about one customer id (or, without one, one
    email) is one record, ``event:<id_type>:<id_value>``, linking that id to every email seen with it."""
    from pyspark.sql import functions as F

    about = F.coalesce(
        F.when(
            F.col("customer_id_value").isNotNull(),
            F.concat_ws(":", F.lit("event"), F.col("customer_id_type"), F.col("customer_id_value")),
        ),
        F.when(F.col("email").isNotNull(), F.concat_ws(":", F.lit("event"), F.lit("email"), F.col("email"))),
    )
    identifiers = F.array(
        F.struct(F.col("customer_id_type").alias("id_type"), F.col("customer_id_value").alias("id_value")),
        F.struct(F.lit("email").alias("id_type"), F.col("email").alias("id_value")),
    )
    return (
        events.where(about.isNotNull())
        .select(
            F.lit(EVENTS_SOURCE).alias("source"),
            about.alias("record_id"),
            F.explode(identifiers).alias("i"),
            F.col("occurred_at").alias("first_seen"),
            F.col("occurred_at").alias("last_seen"),
        )
        .select("source", "record_id", "i.id_type", "i.id_value", "first_seen", "last_seen")
        .where(F.col("id_value").isNotNull() & F.col("id_type").isNotNull())
    )


def merged_custom_fields(records: DataFrame) -> DataFrame:
    """``customer_id, custom_fields`` of ``records`` (``customer_records`` rows with their ``customer_id``): the keys
    of their ``custom_fields`` merged into one JSON object (keys sorted), each key's value from the record that
    survivorship would pick (the most recent ``updated_at``, then the smallest source, then the smallest value).

    Values keep their JSON type (``7`` stays a number, ``"7"`` text). A JSON ``null`` says nothing, like a null field
    (an older record's value of that key survives); text that is not a JSON object (Shopify's list of metafields)
    gives no key. A customer with no key has no row (the profile's ``custom_fields`` is null).
    """
    from pyspark.sql import functions as F

    entries = records.select(
        "customer_id",
        "source",
        "updated_at",
        F.explode(F.from_json("custom_fields", "map<string, variant>")).alias("field", "value"),
    )
    candidates = entries.where(~F.is_variant_null("value")).select(
        F.struct("customer_id", "field").alias(CUSTOM_FIELD_KEY),
        "source",
        "updated_at",
        F.to_json("value").alias("value"),  # JSON text: orderable, so survivorship's last tie-break applies.
    )
    survived = survive_fields(candidates, ["value"], key=CUSTOM_FIELD_KEY)
    pairs = F.array_sort(F.collect_list(F.struct(F.col(f"{CUSTOM_FIELD_KEY}.field").alias("field"), "value")))
    as_object = F.map_from_entries(
        F.transform(pairs, lambda pair: F.struct(pair["field"], F.parse_json(pair["value"])))
    )
    return survived.groupBy(F.col(f"{CUSTOM_FIELD_KEY}.customer_id").alias("customer_id")).agg(
        F.to_json(as_object).alias("custom_fields")
    )


def _tombstones(run: TransformRun) -> DataFrame | None:
    identifier = table_identifier(run.tenant, ERASURES_TABLE)
    if not run.catalog.table_exists(identifier):
        return None
    return read_tombstones(run.spark, run.catalog.load_table(identifier))


def _profiles(
    identity_map: DataFrame, records: DataFrame | None, events: DataFrame | None, run: TransformRun
) -> DataFrame:
    """The profiles of the customers of ``identity_map`` (all their rows), from their records and statements."""
    from pyspark.sql import functions as F

    def values_of(id_type: str) -> Column:
        return F.array_sort(F.collect_set(F.when(F.col("id_type") == id_type, F.col("id_value"))))

    identifiers = identity_map.groupBy("customer_id").agg(
        values_of("email").alias("emails"),
        values_of("phone").alias("phones"),
        *(values_of(id_type).alias(f"{id_type}_ids") for id_type in PROVIDER_ID_TYPES),
        F.array_sort(F.collect_set("source")).alias("sources"),
        F.min("first_seen").alias("first_seen"),
        F.max("last_seen").alias("updated_at"),
    )
    members = identity_map.select("record_id", "customer_id").distinct()
    few = False
    if records is not None and not run.full_refresh:  # When few, sent to the tasks that read every record.
        few = is_few(members)
        members = broadcast_if(members, few)
    candidate_schema = (
        "customer_id string, source string, updated_at timestamp, email string, phone string, "
        "name struct<first_name: string, last_name: string, full_name: string>, "
        "address struct<address_line1: string, address_line2: string, city: string, region: string, "
        "postal_code: string, country: string>, country string"
    )
    statement_schema = "customer_id string, channel string, granted boolean, stated_at timestamp, source string"
    if records is not None:
        # Many records: partitioned by customer once, so the survivorship and consent aggregations need no shuffle of
        # their own (each had shuffled its partial aggregation, which gained nothing on a customer's few records). A
        # few profiles' records: kept after the one read of every record that finds them, for the three aggregations
        # below (each would read every record again: their columns differ); a checkpoint keeps no partitioning.
        joined = records.join(members, "record_id")
        mine = materialise(joined, reliable=True, eager=False) if few else joined.repartition("customer_id")

        def unit(names: tuple[str, ...]) -> Column:
            present = F.greatest(*[F.col(name).isNotNull() for name in names])
            return F.when(present, F.struct(*[F.col(name) for name in names]))

        candidates = mine.select(
            "customer_id",
            "source",
            "updated_at",
            "email",
            "phone",
            unit(NAME_COLUMNS).alias("name"),
            unit(ADDRESS_COLUMNS).alias("address"),
            "country",
        )
        custom = merged_custom_fields(mine)
        # Every channel's statement from one read of the records (a read per channel pushed its own filter down to
        # the scan, so the reads and their shuffles could not be shared).
        said_per_channel = F.array(
            *(
                F.struct(
                    F.lit(channel).alias("channel"),
                    (F.col(f"consent_{channel}") == "granted").alias("granted"),
                    F.col(f"consent_{channel}_at").alias("stated_at"),
                )
                for channel in CHANNELS
            )
        )
        statements = mine.select("customer_id", "source", F.inline(said_per_channel)).where(
            F.col("granted").isNotNull()
        )
    else:
        candidates = run.spark.createDataFrame([], candidate_schema)
        custom = run.spark.createDataFrame([], "customer_id string, custom_fields string")
        statements = run.spark.createDataFrame([], statement_schema)
    if events is not None:
        said = event_statements(events)
        holders = identity_map.select("id_type", "id_value", "customer_id").distinct()
        statements = statements.unionByName(
            said.join(holders, ["id_type", "id_value"]).select(
                "customer_id", "channel", "granted", "stated_at", "source"
            )
        )
    # A record has one customer_id in the map and one row in customer_records: its customer's rows are its records.
    record_count = F.count(F.lit(1)).alias("record_count")
    survived = survive_fields(candidates, SURVIVING_FIELDS, run.settings.survivorship, also=[record_count])
    consent = latest_consent(statements, ["customer_id"])
    profile = identifiers.join(survived, "customer_id", "left")
    profile = profile.join(custom, "customer_id", "left")
    profile = profile.join(consent, "customer_id", "left")
    consent_columns = []
    for channel in CHANNELS:
        granted = F.col(f"consent_{channel}")
        state = F.when(granted, "granted").when(~granted, "denied").otherwise("unknown")
        consent_columns += [state.alias(f"consent_{channel}"), F.col(f"consent_{channel}_at")]
    return profile.select(
        "customer_id",
        F.coalesce(F.col("email"), F.get(F.col("emails"), 0)).alias("email"),
        "emails",
        F.coalesce(F.col("phone"), F.get(F.col("phones"), 0)).alias("phone"),
        "phones",
        *(F.col(f"name.{part}").alias(part) for part in NAME_COLUMNS),
        *(F.col(f"address.{part}").alias(part) for part in ADDRESS_COLUMNS if part != "country"),
        F.coalesce(F.col("address.country"), F.col("country")).alias("country"),
        *(f"{id_type}_ids" for id_type in PROVIDER_ID_TYPES),
        "sources",
        F.coalesce(F.col("record_count"), F.lit(0)).cast("long").alias("record_count"),
        "custom_fields",
        *consent_columns,
        "first_seen",
        "updated_at",
    )


def customers(
    *, customer_records: DataFrame | None = None, events: DataFrame | None = None, run: TransformRun
) -> TransformOutput:
    """Resolve the changed records and events into people, commit the identity map, and return the profiles of the
    people this run affected (all of them on a full refresh, as the complete table)."""

    changed_records, changed_events = run.changed("customer_records"), run.changed("events")
    observed = [
        *([record_observations(changed_records)] if changed_records is not None else []),
        *([event_observations(changed_events)] if changed_events is not None else []),
    ]
    # Nothing changed still runs: tombstones added since the last run take records out of the map.
    empty = (
        "source string, record_id string, id_type string, id_value string, first_seen timestamp, last_seen timestamp"
    )
    observations = union_all(observed, "customers") if observed else run.spark.createDataFrame([], empty)
    map_before = identity_map_snapshot(run.catalog, run.tenant)
    previous = load_identity_map(run.spark, run.catalog, run.tenant)
    resolution = resolve_identities(
        observations,
        run_id=run.run_id,
        resolved_at=run.started_at,
        settings=run.settings.identity,
        previous=previous,
        scope=IdentityScope.REBUILD if run.full_refresh else IdentityScope.TOUCHED,
        erased=_tombstones(run),
        # A changed customer record is its latest version whole; events only add to what was said before.
        restated=changed_records.select("record_id") if changed_records is not None else None,
    )
    committed = commit_identity(run.catalog, run.tenant, resolution, run_id=run.run_id)
    properties = {IDENTITY_MAP_SNAPSHOT_PROPERTY: str(committed.identity_map.snapshot_id)}
    guards = resolution.guard_counts()
    for rule in (RULE_BLOCKED, RULE_SHARED, RULE_PROFILE_CAP):
        run.counters[f"identity.{rule}"] = run.counters.get(f"identity.{rule}", 0) + guards[rule]
    run.counters["identity.merged"] = run.counters.get("identity.merged", 0) + resolution.merges.count()

    profiles = _profiles(resolution.identity_map, customer_records, events, run)
    if run.full_refresh:
        return TransformOutput(rows=profiles, complete=True, properties=properties)
    return TransformOutput(rows=profiles, deleted_keys=_deleted_ids(run, resolution, map_before), properties=properties)


def _deleted_ids(run: TransformRun, resolution: IdentityResolution, map_before: int | None) -> DataFrame | None:
    """``customer_id`` of every published profile the identity map no longer holds (merged away, erased)."""
    from pyspark.sql import functions as F

    published = run.table("customers")
    if published is None:
        return None
    in_step = map_before is not None and run.recorded(IDENTITY_MAP_SNAPSHOT_PROPERTY) == str(map_before)
    if in_step and resolution.touched is not None:
        # The published profiles are the previous map's, and this run replaced only the touched profiles' rows: an id
        # the map lost is a touched one its new rows no longer hold. Both are small; no table is read.
        kept = resolution.identity_map.select("customer_id").where(F.col("customer_id").isNotNull()).distinct()
        return resolution.touched.select("customer_id").join(kept, "customer_id", "left_anti")
    # Out of step: every published id the map no longer holds, this run's merges and erasures and those of a run that
    # committed the map but stopped before committing customers. Read twice (the keys, then their rows): computed
    # once, kept in memory.
    current = load_identity_map(run.spark, run.catalog, run.tenant)
    if current is None:
        return None
    gone = (
        published.select("customer_id")
        .distinct()
        .join(current.select("customer_id").distinct(), "customer_id", "left_anti")
        .where(F.col("customer_id").isNotNull())
    )
    return materialise(gone, reliable=False)
