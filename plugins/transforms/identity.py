"""Identity resolution: which records are the same person, under a ``customer_id`` that stays the same across runs.

Deterministic links only. The graph's nodes are identifier values typed ``id_type:id_value`` (``email:ann@x.io``,
``stripe_customer:cus_1``); two identifiers seen in one record are linked. Its connected components, found with the
large-star/small-star algorithm (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014) on
DataFrames, are the people. Nothing is collected to the driver, so the same code runs on a cluster.

Guards keep one shared value from merging strangers (as Segment's per-type limits and RudderStack's cardinality rules
do): blocked values never link, a value seen in more than N records is not a link, and a profile keeps at most K
values of a type. Every identifier a guard cuts is reported in an audit DataFrame.

The identity map (one row per identifier and record, with its ``customer_id``) is persisted in the processed zone. A
later run reads it back: a person keeps their id, and when two profiles merge the older id survives and the merge is
recorded, so loaders can delete the merged-away id. :func:`survive_fields` picks each field of a profile from its
records (most recent non-null, or a source priority per field).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event
from plugins.transforms.catalog import create_table
from plugins.transforms.commit import CommitResult, commit_files, live_data_files, write_data_files
from plugins.transforms.table_reader import read_table

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: The observation columns :func:`resolve_identities` needs, one row per (record, identifier).
OBSERVATION_COLUMNS = ("source", "record_id", "id_type", "id_value", "observed_at")
IDENTITY_MAP_TABLE = "identity_map"
IDENTITY_MERGES_TABLE = "identity_merges"
IDENTITY_AUDIT_TABLE = "identity_audit"
CUSTOMER_ID_PREFIX = "cus_"
#: A record none of whose identifiers may link is a person of its own, under this node.
RECORD_NODE_PREFIX = "record:"

#: Placeholders that sources put where they have no value; compared lower-cased and trimmed, for every type.
DEFAULT_BLOCKED_VALUES = frozenset(
    {"", "null", "none", "nil", "n/a", "na", "unknown", "undefined", "-", "0", "test@example.com", "test@test.com"}
)
#: Phones made of zeros after an optional country code (``+10000000000``, ``0000000``).
ALL_ZERO_PHONE = r"^\+?(\d{1,3})?0{6,}$"

#: The guard rules, as they appear in the audit.
RULE_BLOCKED = "blocked_value"
RULE_SHARED = "shared_value"
RULE_PROFILE_CAP = "profile_cap"


class IdentityError(CdpError):
    """Identity resolution got input it cannot use (a missing column, an unknown setting)."""


@dataclass(frozen=True)
class IdTypeRules:
    """The guards for one identifier type.

    ``max_records_per_value`` (N): a value seen in more than N distinct records is not used as a link (None: no limit).
    ``max_values_per_profile`` (K): a profile keeps at most K values of the type, the most recently seen (then the
    most frequent, then the smallest); the rest stop linking (None: no limit).
    ``blocked_values`` never link (compared lower-cased and trimmed), nor values matching ``blocked_pattern``.
    """

    max_records_per_value: int | None = None
    max_values_per_profile: int | None = None
    blocked_values: frozenset[str] = frozenset()
    blocked_pattern: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_records_per_value", "max_values_per_profile"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"identity.{name}", f"must be 1 or more, or None for no limit, not {value}")


def default_type_rules() -> dict[str, IdTypeRules]:
    """The documented defaults: contact points are capped, provider ids are not (they name one person already)."""
    return {
        # An address in more than 20 records is a shared inbox (info@, orders@); a person rarely has more than 5.
        "email": IdTypeRules(max_records_per_value=20, max_values_per_profile=5),
        # A number in more than 10 records is a front desk or a switchboard.
        "phone": IdTypeRules(max_records_per_value=10, max_values_per_profile=5, blocked_pattern=ALL_ZERO_PHONE),
    }


@dataclass(frozen=True)
class IdentitySettings:
    """Identity resolution settings. ``types`` holds the rules per ``id_type``; other types follow ``other_types``
    (no limits: provider ids such as ``stripe_customer`` are referenced by any number of events of the same person).
    ``blocked_values`` never link, whatever their type. The connected-components loop checkpoints every
    ``checkpoint_every`` rounds and gives up after ``max_rounds`` (it needs O(log² n) rounds for n nodes)."""

    types: Mapping[str, IdTypeRules] = field(default_factory=default_type_rules)
    other_types: IdTypeRules = IdTypeRules()
    blocked_values: frozenset[str] = DEFAULT_BLOCKED_VALUES
    checkpoint_every: int = 2
    max_rounds: int = 100

    def rules(self, id_type: str) -> IdTypeRules:
        return self.types.get(id_type, self.other_types)

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.max_rounds < 1:
            raise ConfigError("identity.checkpoint_every", "checkpoint_every and max_rounds must be 1 or more")


@dataclass(frozen=True)
class IdentityResolution:
    """What one resolution computed, as DataFrames over one checkpoint (using them does not run the graph again).

    ``identity_map``: one row per (identifier, record): ``id_type, id_value, record_id, source, customer_id,
    first_seen, last_seen, linked, cut_rule`` (``linked`` is false where a guard cut the identifier, ``cut_rule`` says
    which; every linked identifier has one customer_id). ``records``: ``record_id, source, customer_id``.
    ``merges``: ``survivor_id, merged_id, run_id, merged_at``, the earlier ids this run merged away. ``audit``:
    ``rule, id_type, id_value, records_affected, run_id``, one row per identifier a guard cut.
    """

    identity_map: DataFrame
    records: DataFrame
    merges: DataFrame
    audit: DataFrame

    def guard_counts(self) -> dict[str, int]:
        """Identifiers cut per guard rule (for the quality report); a small aggregate, not the graph."""
        from pyspark.sql import functions as F

        counted = {
            row["rule"]: int(row["cut"]) for row in self.audit.groupBy("rule").agg(F.count("*").alias("cut")).collect()
        }
        return {rule: counted.get(rule, 0) for rule in (RULE_BLOCKED, RULE_SHARED, RULE_PROFILE_CAP)}


@dataclass(frozen=True)
class IdentityCommit:
    """The snapshots one run committed: the identity map (replaced), the merges (appended), the audit (replaced)."""

    identity_map: CommitResult
    merges: CommitResult | None
    audit: CommitResult


# -- connected components ------------------------------------------------------------------------------------------


def connected_components(edges: DataFrame, *, checkpoint_every: int = 2, max_rounds: int = 100) -> DataFrame:
    """``node, component`` for every node of ``edges`` (``src, dst`` strings, undirected; a self-loop ``(n, n)``
    brings in a node without links). ``component`` is the smallest node of the node's component.

    Large-star/small-star alternated until the edges form one star per component (a fixed point of both). The edge
    set is checkpointed every ``checkpoint_every`` rounds so its lineage stays short (a reliable checkpoint where the
    SparkContext has a checkpoint directory, a local one otherwise) and cached in the rounds between.
    """
    from pyspark.sql import functions as F

    nodes = edges.select(F.col("src").alias("node")).union(edges.select(F.col("dst").alias("node"))).distinct()
    links = edges.filter(F.col("src") != F.col("dst")).select(F.col("src").alias("u"), F.col("dst").alias("v"))
    current = _canonical(links).cache()
    rounds, previous = 0, None
    while not _is_star_forest(current):  # This action also computes the cached edges of the round.
        if previous is not None:
            previous.unpersist()
        rounds += 1
        if rounds > max_rounds:
            raise IdentityError(
                f"connected components did not converge in {max_rounds} rounds; raise identity max_rounds"
            )
        following = _small_star(_large_star(current))
        following = _materialise(following, reliable=rounds % checkpoint_every == 0, eager=False)
        previous, current = current, following
    if previous is not None:
        previous.unpersist()
    log_event(logger, "identity_components_converged", rounds=rounds)
    parents = current.select(F.col("u").alias("node"), F.col("v").alias("parent"))
    labels = nodes.join(parents, "node", "left").select("node", F.coalesce("parent", "node").alias("component"))
    return _materialise(labels, reliable=True, eager=False)


def _is_star_forest(edges: DataFrame) -> bool:
    """Whether every node has at most one parent and no parent has one: the fixed point of both operations, each
    component one star around its smallest node. One Spark job, one shuffle."""
    from pyspark.sql import functions as F

    roles = edges.select(
        F.explode(
            F.array(
                F.struct(F.col("u").alias("node"), F.lit(1).alias("child"), F.lit(0).alias("parent")),
                F.struct(F.col("v").alias("node"), F.lit(0).alias("child"), F.lit(1).alias("parent")),
            )
        ).alias("role")
    ).select("role.*")
    per_node = roles.groupBy("node").agg(F.sum("child").alias("child"), F.sum("parent").alias("parent"))
    return per_node.filter("child > 1 OR (child > 0 AND parent > 0)").isEmpty()


def _canonical(edges: DataFrame) -> DataFrame:
    """Each undirected edge once, as ``u > v``."""
    from pyspark.sql import functions as F

    return edges.select(F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v")).distinct()


def _large_star(edges: DataFrame) -> DataFrame:
    """Every node links its larger neighbours to the smallest of its neighbourhood (itself included).

    The result is oriented ``u > v`` and may repeat an edge; :func:`_small_star` removes repeats."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    both = edges.select(
        F.explode(
            F.array(
                F.struct(F.col("u").alias("a"), F.col("v").alias("b")),
                F.struct(F.col("v").alias("a"), F.col("u").alias("b")),
            )
        ).alias("edge")
    ).select("edge.*")
    smallest = F.least(F.min("b").over(Window.partitionBy("a")), F.col("a"))
    return (
        both.withColumn("m", smallest)
        .filter(F.col("b") > F.col("a"))
        .select(F.col("b").alias("u"), F.col("m").alias("v"))
    )


def _small_star(edges: DataFrame) -> DataFrame:
    """Every node links itself and its smaller neighbours to the smallest of them; each edge once, as ``u > v``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    smallest = F.min("v").over(Window.partitionBy("u"))
    linked = edges.select(F.explode(F.array("u", "v")).alias("u"), smallest.alias("v"))
    return linked.filter(F.col("u") != F.col("v")).distinct()


def _materialise(frame: DataFrame, *, reliable: bool, eager: bool = True) -> DataFrame:
    """Checkpoint (cutting the lineage) when ``reliable``, else cache; either way the frame is computed once, now or
    (cached, or not ``eager``) by the next action."""
    if not reliable:
        return frame.cache()
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint(eager=eager)
    return frame.localCheckpoint(eager=eager)


# -- resolution ------------------------------------------------------------------------------------------------------


def resolve_identities(
    observations: DataFrame,
    *,
    run_id: str,
    resolved_at: datetime,
    settings: IdentitySettings | None = None,
    previous: DataFrame | None = None,
) -> IdentityResolution:
    """Resolve ``observations`` (``source, record_id, id_type, id_value, observed_at``; values already normalised)
    together with the ``previous`` identity map (:func:`load_identity_map`; None on the first run).

    Every identifier and record seen before stays in the graph, so a run on new data gives the same people as one
    run on everything. Ids: a component holding earlier customers keeps the one with the earliest ``first_seen``
    (ties: the smallest id) and records the others as merged; a new component's id is ``cus_`` and a hash of its
    smallest identifier, so the same input always gives the same ids.
    """
    from pyspark.sql import functions as F

    chosen = settings or IdentitySettings()
    if missing := [name for name in OBSERVATION_COLUMNS if name not in observations.columns]:
        raise IdentityError(f"identity observations lack column(s) {', '.join(missing)}; give {OBSERVATION_COLUMNS}")
    keys = ["id_type", "id_value", "record_id", "source"]
    fresh = observations.groupBy(*keys).agg(
        F.min("observed_at").alias("first_seen"),
        F.max("observed_at").alias("last_seen"),
        F.lit(None).cast("string").alias("previous_id"),
    )
    if previous is not None:
        known = previous.select(*keys, "first_seen", "last_seen", F.col("customer_id").alias("previous_id"))
        fresh = fresh.unionByName(known)
    links = fresh.groupBy(*keys).agg(
        F.min("first_seen").alias("first_seen"),
        F.max("last_seen").alias("last_seen"),
        F.max("previous_id").alias("previous_id"),
    )
    usable = ~_blocked(chosen)
    per_value = links.filter(usable).groupBy("id_type", "id_value").agg(F.countDistinct("record_id").alias("records"))
    limit = _per_type(chosen, lambda rules: rules.max_records_per_value)
    shared = per_value.filter(limit.isNotNull() & (F.col("records") > limit)).select(
        "id_type", "id_value", F.lit(RULE_SHARED).alias("rule")
    )
    # ``cut``: the guard that keeps an identifier from linking (null: it links).
    links = (
        links.withColumn("node", F.concat_ws(":", "id_type", "id_value"))
        .join(shared, ["id_type", "id_value"], "left")
        .withColumn("cut", F.when(~usable, F.lit(RULE_BLOCKED)).otherwise(F.col("rule")))
        .drop("rule")
    )
    links = _materialise(links, reliable=True)

    labels = _components(links, chosen)
    capped = _over_cap(links.filter(F.col("cut").isNull()), labels, chosen).cache()
    if not capped.isEmpty():
        links = links.join(capped.withColumn("rule", F.lit(RULE_PROFILE_CAP)), ["id_type", "id_value"], "left")
        links = links.withColumn("cut", F.coalesce("cut", "rule")).drop("rule")
        labels = _components(links, chosen)
    capped.unpersist()

    anchors = links.filter(F.col("cut").isNull()).groupBy("record_id").agg(F.min("node").alias("anchor"))
    placed = (
        links.join(anchors, "record_id", "left")
        .withColumn("anchor", F.coalesce("anchor", F.concat(F.lit(RECORD_NODE_PREFIX), "record_id")))
        .join(labels.withColumnRenamed("node", "anchor"), "anchor", "left")
        .withColumn("component", F.coalesce("component", "anchor"))
    )
    resolved = _materialise(placed.join(_customer_ids(placed), "component"), reliable=True)
    identity_map = resolved.select(
        *keys,
        "customer_id",
        "first_seen",
        "last_seen",
        F.col("cut").isNull().alias("linked"),
        F.col("cut").alias("cut_rule"),
    )
    audit = (
        resolved.filter(F.col("cut").isNotNull())
        .groupBy(F.col("cut").alias("rule"), "id_type", "id_value")
        .agg(F.countDistinct("record_id").cast("long").alias("records_affected"))
        .withColumn("run_id", F.lit(run_id))
    )
    return IdentityResolution(
        identity_map=identity_map,
        records=resolved.select("record_id", "source", "customer_id").distinct(),
        merges=_merges(resolved, run_id, resolved_at),
        audit=audit,
    )


def _blocked(settings: IdentitySettings) -> Column:
    from pyspark.sql import functions as F

    value = F.lower(F.trim(F.col("id_value")))
    condition = F.col("id_value").isNull() | value.isin(sorted(settings.blocked_values))
    for id_type, rules in settings.types.items():
        of_type = F.lit(False)
        if rules.blocked_values:
            of_type = of_type | value.isin(sorted(rules.blocked_values))
        if rules.blocked_pattern:
            of_type = of_type | value.rlike(rules.blocked_pattern)
        condition = condition | ((F.col("id_type") == id_type) & of_type)
    other = settings.other_types
    others = F.lit(False)
    if other.blocked_values:
        others = others | value.isin(sorted(other.blocked_values))
    if other.blocked_pattern:
        others = others | value.rlike(other.blocked_pattern)
    known = F.col("id_type").isin(sorted(settings.types)) if settings.types else F.lit(False)
    return condition | (~known & others)


def _per_type(settings: IdentitySettings, limit_of: Callable[[IdTypeRules], int | None]) -> Column:
    """The limit of each row's ``id_type`` as a column (null: no limit)."""
    from pyspark.sql import functions as F

    default = limit_of(settings.other_types)
    expression = F.lit(default).cast("long")
    for id_type, rules in settings.types.items():
        expression = F.when(F.col("id_type") == id_type, F.lit(limit_of(rules)).cast("long")).otherwise(expression)
    return expression


def _components(links: DataFrame, settings: IdentitySettings) -> DataFrame:
    """The components of the identifiers that link: within a record each one is linked to the record's smallest."""
    from pyspark.sql import functions as F

    linking = links.filter(F.col("cut").isNull())
    anchors = linking.groupBy("record_id").agg(F.min("node").alias("anchor"))
    edges = linking.join(anchors, "record_id").select(F.col("node").alias("src"), F.col("anchor").alias("dst"))
    return connected_components(edges, checkpoint_every=settings.checkpoint_every, max_rounds=settings.max_rounds)


def _over_cap(linking: DataFrame, labels: DataFrame, settings: IdentitySettings) -> DataFrame:
    """The identifiers beyond their type's cap in their profile: ``id_type, id_value, records``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    values = (
        linking.join(labels, "node")
        .groupBy("component", "id_type", "id_value")
        .agg(F.max("last_seen").alias("last_seen"), F.countDistinct("record_id").alias("records"))
    )
    order = Window.partitionBy("component", "id_type").orderBy(
        F.col("last_seen").desc_nulls_last(), F.col("records").desc(), F.col("id_value")
    )
    cap = _per_type(settings, lambda rules: rules.max_values_per_profile)
    ranked = values.withColumn("rank", F.row_number().over(order))
    return ranked.filter(cap.isNotNull() & (F.col("rank") > cap)).select("id_type", "id_value", "records")


def _customer_ids(placed: DataFrame) -> DataFrame:
    """``component, customer_id``: the oldest earlier id the component holds, else ``cus_`` + a hash of the
    component's smallest identifier."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    earlier = placed.filter(F.col("previous_id").isNotNull())
    born = earlier.groupBy("previous_id").agg(F.min("first_seen").alias("born"))
    held = earlier.select("component", "previous_id").distinct().join(born, "previous_id")
    oldest = Window.partitionBy("component").orderBy(F.col("born").asc_nulls_last(), "previous_id")
    candidates = held.withColumn("rank", F.row_number().over(oldest)).filter("rank = 1")
    # A guard may now split an earlier profile: its id stays with one part only (the smallest component).
    once = Window.partitionBy("previous_id").orderBy("component")
    survivors = candidates.withColumn("rank", F.row_number().over(once)).filter("rank = 1")
    hashed = F.concat(F.lit(CUSTOMER_ID_PREFIX), F.substring(F.sha2(F.col("component"), 256), 1, 24))
    return (
        placed.select("component")
        .distinct()
        .join(survivors.select("component", "previous_id"), "component", "left")
        .select("component", F.coalesce("previous_id", hashed).alias("customer_id"))
    )


def _merges(resolved: DataFrame, run_id: str, resolved_at: datetime) -> DataFrame:
    """The earlier ids that no longer name a profile, each with the profile that absorbed it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    current = resolved.select(F.col("customer_id").alias("previous_id")).distinct()
    gone = (
        resolved.filter(F.col("previous_id").isNotNull())
        .select("previous_id", "component", "customer_id")
        .distinct()
        .join(current, "previous_id", "left_anti")
    )
    first = Window.partitionBy("previous_id").orderBy("component")
    return (
        gone.withColumn("rank", F.row_number().over(first))
        .filter("rank = 1")
        .select(
            F.col("customer_id").alias("survivor_id"),
            F.col("previous_id").alias("merged_id"),
            F.lit(run_id).alias("run_id"),
            F.lit(resolved_at).cast("timestamp").alias("merged_at"),
        )
    )


# -- persistence -----------------------------------------------------------------------------------------------------


def load_identity_map(spark: SparkSession, catalog: SqlCatalog, tenant: str) -> DataFrame | None:
    """The tenant's persisted identity map, or None before its first commit."""
    from plugins.transforms.catalog import table_identifier

    identifier = table_identifier(tenant, IDENTITY_MAP_TABLE)
    if not catalog.table_exists(identifier):
        return None
    table = catalog.load_table(identifier)
    if table.current_snapshot() is None:
        return None
    return read_table(spark, table).drop("_cdp_data_file")


def commit_identity(
    catalog: SqlCatalog, tenant: str, resolution: IdentityResolution, *, run_id: str, raw_files: Iterable[str] = ()
) -> IdentityCommit:
    """Persist a resolution: the merges are appended first, then the audit and the identity map are replaced.

    The map commits last: a crash before it leaves the previous map, and the next run finds the same merges again
    (a merge may then be recorded twice; deleting a merged-away id downstream is idempotent). ``raw_files`` are the
    raw-zone keys the observations came from, recorded with the map's snapshot.
    """
    merges_table = create_table(catalog, tenant, IDENTITY_MERGES_TABLE, resolution.merges.schema)
    merges = None
    if not resolution.merges.isEmpty():
        merges = commit_files(merges_table, add=write_data_files(resolution.merges, merges_table, run_id=run_id))
    audit_table = create_table(catalog, tenant, IDENTITY_AUDIT_TABLE, resolution.audit.schema)
    audit = _replace(audit_table, resolution.audit, run_id, ())
    map_table = create_table(catalog, tenant, IDENTITY_MAP_TABLE, resolution.identity_map.schema)
    identity_map = _replace(map_table, resolution.identity_map, run_id, raw_files)
    log_event(
        logger,
        "identity_committed",
        tenant=tenant,
        run_id=run_id,
        map_snapshot=identity_map.snapshot_id,
        merges=0 if merges is None else merges.added_files,
    )
    return IdentityCommit(identity_map=identity_map, merges=merges, audit=audit)


def _replace(table: Table, frame: DataFrame, run_id: str, raw_files: Iterable[str]) -> CommitResult:
    return commit_files(
        table,
        add=write_data_files(frame, table, run_id=run_id),
        remove=list(live_data_files(table)),
        raw_files=raw_files,
    )


# -- survivorship ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurvivorshipSettings:
    """Which record's value a profile keeps, per field: the most recent non-null by default; for a field listed in
    ``source_priority``, the first source of its list that has a non-null value (then the most recent; sources not
    listed come after the listed ones). Ties: the smallest source, then the smallest value."""

    source_priority: Mapping[str, Sequence[str]] = field(default_factory=dict)


def survive_fields(
    candidates: DataFrame,
    fields: Sequence[str],
    settings: SurvivorshipSettings | None = None,
    *,
    key: str = "customer_id",
) -> DataFrame:
    """One row per ``key`` with each of ``fields`` picked from ``candidates`` (columns ``key``, ``source``,
    ``updated_at`` and the fields), by :class:`SurvivorshipSettings`. Fields must be of orderable types."""
    from pyspark.sql import functions as F

    chosen = settings or SurvivorshipSettings()
    if missing := [name for name in (key, "source", "updated_at", *fields) if name not in candidates.columns]:
        raise IdentityError(f"survivorship candidates lack column(s) {', '.join(missing)}")
    if unknown := sorted(set(chosen.source_priority) - set(fields)):
        raise ConfigError("survivorship.source_priority", f"names field(s) not picked here: {', '.join(unknown)}")
    # Newest first: the negated microseconds order ascending; a missing updated_at comes last.
    recency = F.coalesce(-F.unix_micros("updated_at"), F.lit(2**63 - 1))
    picks = []
    for name in fields:
        priority = _priority(chosen.source_priority.get(name, ()))
        ordering = F.struct(
            priority.alias("p"), recency.alias("r"), F.col("source").alias("s"), F.col(name).alias("value")
        )
        best = F.min(F.when(F.col(name).isNotNull(), ordering))
        picks.append(best.getField("value").alias(name))
    return candidates.groupBy(key).agg(*picks)


def _priority(sources: Sequence[str]) -> Column:
    from pyspark.sql import functions as F

    expression = F.lit(len(sources))
    for position, source in reversed(list(enumerate(sources))):
        expression = F.when(F.col("source") == source, F.lit(position)).otherwise(expression)
    return expression


__all__ = [
    "IdTypeRules",
    "IdentityCommit",
    "IdentityError",
    "IdentityResolution",
    "IdentitySettings",
    "SurvivorshipSettings",
    "commit_identity",
    "connected_components",
    "default_type_rules",
    "load_identity_map",
    "resolve_identities",
    "survive_fields",
]
