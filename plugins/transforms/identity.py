"""Identity resolution: which records are the same person, under a ``customer_id`` that stays the same across runs.

Deterministic links only. The graph's nodes are identifier values typed ``id_type:id_value`` (``email:ann@x.io``,
``stripe_customer:cus_1``) that two or more records hold; two of them seen in one record are linked (an identifier
one record holds joins no records, so it stays out). Its connected components, found with the large-star/small-star
algorithm (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014) on DataFrames, or in one task
for a small graph, with the records holding their identifiers, are the people. Nothing is collected to the driver,
so the same code runs on a cluster.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError, ConfigError
from plugins.core.events import log_event
from plugins.transforms.catalog import create_table
from plugins.transforms.commit import (
    CommitResult,
    commit_files,
    files_in_partitions_of,
    live_data_files,
    rewrite_keeping_rows,
    write_data_files,
)
from plugins.transforms.frames import broadcast_if, is_few, materialise
from plugins.transforms.table_reader import DATA_FILE_COLUMN, read_data_files, read_table

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: The observation columns :func:`resolve_identities` needs, one row per (record, identifier).
OBSERVATION_COLUMNS = ("source", "record_id", "id_type", "id_value", "observed_at")
#: In place of ``observed_at``: the first and last moment of an identifier a record held over a span (a record's
#: creation and its last update), one row instead of one per moment. Taken either way round; a null end is the other.
OBSERVATION_SPAN_COLUMNS = ("first_seen", "last_seen")
IDENTITY_MAP_TABLE = "identity_map"
IDENTITY_MERGES_TABLE = "identity_merges"
IDENTITY_AUDIT_TABLE = "identity_audit"
CUSTOMER_ID_PREFIX = "cus_"
#: The identity map is bucketed by customer_id, so an incremental run rewrites the few files its profiles live in.
IDENTITY_MAP_PARTITIONING = ("bucket(16, customer_id)",)
#: A record none of whose identifiers may link is a person of its own, under this node.
RECORD_NODE_PREFIX = "record:"
#: The edges a large-star/small-star round changed (connected components stop at a round that changed none).
CHANGED_COLUMN = "_cdp_changed"

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
    ``blocked_values`` never link, whatever their type. The connected-components loop (a graph too large for one task)
    checkpoints every ``checkpoint_every`` rounds and gives up after ``max_rounds`` (it needs O(log² n) rounds for n
    nodes)."""

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


class IdentityScope(StrEnum):
    """Which rows of the previous identity map a resolution takes in, and so which rows its map replaces.

    ``ALL``: every previous row (the whole map is rewritten). ``TOUCHED`` (incremental runs): only the previous
    profiles the observations touch, whole; the rest of the map stays as it is. ``REBUILD`` (full refreshes): the
    observations alone, the previous map lending the ids (and first sightings) of the identifiers it shares with them.
    """

    ALL = "all"
    TOUCHED = "touched"
    REBUILD = "rebuild"


@dataclass(frozen=True)
class IdentityResolution:
    """What one resolution computed, as DataFrames over one checkpoint (using them does not run the graph again).

    ``identity_map``: one row per (identifier, record): ``id_type, id_value, record_id, source, customer_id,
    first_seen, last_seen, linked, cut_rule`` (``linked`` is false where a guard cut the identifier, ``cut_rule`` says
    which; every linked identifier has one customer_id). ``records``: ``record_id, source, customer_id``.
    ``merges``: ``survivor_id, merged_id, run_id, merged_at``, the earlier ids this run merged away. ``audit``:
    ``rule, id_type, id_value, records_affected, run_id``, one row per identifier a guard cut (``records_affected``
    counted over the whole map). ``touched``: ``customer_id`` of the previous profiles ``identity_map`` replaces
    (None: it replaces the whole map); ``values``: ``id_type, id_value`` of every identifier it holds.
    """

    identity_map: DataFrame
    records: DataFrame
    merges: DataFrame
    audit: DataFrame
    touched: DataFrame | None = None
    values: DataFrame | None = None

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
    brings in a node without links; a null end is no node). ``component`` is the smallest node of the node's
    component.

    A graph of at most ``MAX_BROADCAST_ROWS`` edges (an incremental run's touched profiles) is solved in ONE task by a
    union-find over its edges (:func:`_union_find_components`, on an executor, never the driver): 250,000 edges take
    about 1.3 s there, where every round below costs three shuffles whatever the size.

    A larger one goes through large-star/small-star, alternated until the edges form one star per component (a fixed
    point of both). Each round flags the edges it changed, so one small aggregation over the round's own output tells
    whether its input was already that fixed point: convergence costs no shuffle of its own (the round that finds it
    changed nothing is the one extra). The rounds run on numbers, not the node strings: each node gets a unique long
    once (fixed by a checkpoint), so every round shuffles and sorts 8-byte keys; each component ends as a star around
    its smallest number and is then named by its smallest node. The edge set is checkpointed every ``checkpoint_every``
    rounds so its lineage stays short (a reliable checkpoint where the SparkContext has a checkpoint directory, a local
    one otherwise) and cached in the rounds between.
    """
    from pyspark.sql import functions as F

    edges = materialise(edges.select("src", "dst"), reliable=True)  # Counted, then read by either way.
    if is_few(edges):
        # coalesce, not repartition: the checkpointed partitions are read by the one task, with no shuffle.
        labels = edges.coalesce(1).mapInArrow(_union_find_components, "node string, component string")
        log_event(logger, "identity_components_found", method="union-find in one task")
        return materialise(labels, reliable=True, eager=False)
    ends = edges.select(F.col("src").alias("node")).union(edges.select(F.col("dst").alias("node")))
    nodes = ends.filter(F.col("node").isNotNull()).distinct()
    # Unique, not dense, and not stable across recomputation: the checkpoint fixes them for every join below.
    numbered = materialise(nodes.withColumn("id", F.monotonically_increasing_id()), reliable=True)
    links = (
        edges.filter(F.col("src") != F.col("dst"))
        .join(numbered.select(F.col("node").alias("src"), F.col("id").alias("u")), "src")
        .join(numbered.select(F.col("node").alias("dst"), F.col("id").alias("v")), "dst")
        .select("u", "v")
    )
    current, rounds, previous = _canonical(links), 0, None
    while True:
        following = _small_star(_large_star(current))
        following = materialise(following, reliable=(rounds + 1) % checkpoint_every == 0, eager=False)
        # This action also computes (and caches or checkpoints) the round's edges.
        changed = following.agg(F.max(CHANGED_COLUMN).alias("changed")).first()
        if previous is not None:
            previous.unpersist()
        previous, current = current, following
        if changed is None or not changed["changed"]:
            break
        rounds += 1
        if rounds > max_rounds:
            previous.unpersist()
            current.unpersist()
            raise IdentityError(
                f"connected components did not converge in {max_rounds} rounds; raise identity max_rounds"
            )
    previous.unpersist()
    log_event(logger, "identity_components_converged", rounds=rounds)
    # In the star forest each non-root node points at its component's root; a root or a lonely node is its own.
    parents = current.select(F.col("u").alias("id"), F.col("v").alias("root"))
    placed = numbered.join(parents, "id", "left").select("node", F.coalesce("root", "id").alias("root"))
    # The numbers follow no order of the strings: the component is named by its smallest node, as documented.
    named = placed.groupBy("root").agg(F.min("node").alias("component"))
    labels = placed.join(named, "root").select("node", "component")
    return materialise(labels, reliable=True, eager=False)


def _union_find_components(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One task's whole graph (Arrow batches of ``src, dst``) -> ``node, component`` batches, the component being its
    smallest node: a union-find whose root is always the smaller of two merged roots, with path splitting. A null end
    is no node (as in the rounds' joins)."""
    import pyarrow as pa

    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while (up := parent[node]) != node:
            parent[node] = parent[up]  # Path splitting: each node passed now points two steps up.
            node = up
        return node

    for batch in batches:
        for src, dst in zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist(), strict=True):
            for end in (src, dst):
                if end is not None:
                    parent.setdefault(end, end)
            if src is None or dst is None:
                continue
            one, other = find(src), find(dst)
            if one != other:
                parent[max(one, other)] = min(one, other)
    nodes = list(parent)
    step = 65_536
    for start in range(0, len(nodes), step):
        chunk = nodes[start : start + step]
        yield pa.RecordBatch.from_arrays(
            [pa.array(chunk, pa.string()), pa.array([find(node) for node in chunk], pa.string())], ["node", "component"]
        )


def _canonical(edges: DataFrame) -> DataFrame:
    """Each undirected edge once, as ``u > v``."""
    from pyspark.sql import functions as F

    return edges.select(F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v")).distinct()


def _large_star(edges: DataFrame) -> DataFrame:
    """Every node links its larger neighbours to the smallest of its neighbourhood (itself included).

    The result is oriented ``u > v`` and may repeat an edge; :func:`_small_star` removes repeats. An edge is flagged
    changed (``_cdp_changed``) when it now points elsewhere: where none is, the output is the input."""
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
        .select(F.col("b").alias("u"), F.col("m").alias("v"), (F.col("m") != F.col("a")).alias(CHANGED_COLUMN))
    )


def _small_star(edges: DataFrame) -> DataFrame:
    """Every node links itself and its smaller neighbours to the smallest of them; each edge once, as ``u > v``.

    An output edge stays flagged changed when an input edge it comes from was, or when its node had more than one
    smaller neighbour (those now link to the smallest): where nothing is flagged, input and output are one star
    forest, the fixed point of both operations."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    around = Window.partitionBy("u")
    smallest = F.min("v").over(around)
    changed = F.col(CHANGED_COLUMN) | (F.max("v").over(around) != smallest)
    linked = edges.select(F.explode(F.array("u", "v")).alias("u"), smallest.alias("v"), changed.alias(CHANGED_COLUMN))
    return linked.filter(F.col("u") != F.col("v")).groupBy("u", "v").agg(F.max(CHANGED_COLUMN).alias(CHANGED_COLUMN))


_FRESH_RECORD = "_cdp_fresh_record"  # A previous map row of a record observed again.
_RESTATED = "_cdp_restated"  # A previous map row of a record restated whole by its latest version.
_FRESH_VALUE = "_cdp_fresh_value"  # A previous map row holding an identifier observed again.

# -- resolution ------------------------------------------------------------------------------------------------------


def resolve_identities(
    observations: DataFrame,
    *,
    run_id: str,
    resolved_at: datetime,
    settings: IdentitySettings | None = None,
    previous: DataFrame | None = None,
    scope: IdentityScope = IdentityScope.ALL,
    erased: DataFrame | None = None,
    restated: DataFrame | None = None,
) -> IdentityResolution:
    """Resolve ``observations`` (``source, record_id, id_type, id_value, observed_at``, or ``first_seen, last_seen``
    in place of ``observed_at``; values already normalised) together with the ``previous`` identity map
    (:func:`load_identity_map`; None on the first run).

    ``scope`` says which previous rows take part (:class:`IdentityScope`). With ``TOUCHED`` a run resolves only the
    profiles its observations touch: those sharing a record or an identifier that may link (a value cut as blocked
    or shared stays cut, since counts only grow, so it touches no one) with the observations, whole, and the profiles
    sharing a value the profile cap cut with those (the cap judges whole components); the shared-value guard still
    counts the records of each value over the whole map. Either way the people are those of one run on
    everything. ``erased`` (``id_type, id_value`` tombstones): every record holding one leaves the map.
    ``restated`` (``record_id``): records whose observations here are their whole current state (a record's new
    version): identifiers the previous map holds for them and the observations lack leave the map. Other records'
    observations add to what the map holds (an ``event:`` record gathers what every event said).

    Ids: a component holding earlier customers keeps the one born first (its earliest identifier: ``first_seen``,
    then the smallest) and records the others as merged; a new component's id is ``cus_`` and a hash of its
    earliest identifier, so the same input always gives the same ids, and a run on the later half of the data gives
    the ids of one run on all of it as long as each person's earliest identifier came in the earlier half.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    chosen = settings or IdentitySettings()
    spans = all(name in observations.columns for name in OBSERVATION_SPAN_COLUMNS)
    needed = [*OBSERVATION_COLUMNS[:-1], *(() if spans else OBSERVATION_COLUMNS[-1:])]
    if missing := [name for name in needed if name not in observations.columns]:
        raise IdentityError(
            f"identity observations lack column(s) {', '.join(missing)}; give {', '.join(OBSERVATION_COLUMNS)} "
            f"(or {' and '.join(OBSERVATION_SPAN_COLUMNS)} in place of {OBSERVATION_COLUMNS[-1]})"
        )
    keys = ["id_type", "id_value", "record_id", "source"]

    def per_key(rows: DataFrame, *more: Column) -> DataFrame:
        """One row per key: its first and last sighting, its previous id."""
        return rows.groupBy(*keys).agg(
            F.min("first_seen").alias("first_seen"),
            F.max("last_seen").alias("last_seen"),
            F.max("previous_id").alias("previous_id"),
            *more,
        )

    # One row per observation: grouped by key with the previous map's rows below (or first, in a TOUCHED run).
    if spans:  # Its two ends, whichever way round they came (a null end: the other).
        one, other = (F.col(name) for name in OBSERVATION_SPAN_COLUMNS)
        first_seen, last_seen = F.least(one, other), F.greatest(one, other)
    else:
        first_seen = last_seen = F.col("observed_at")
    fresh = observations.select(
        *keys,
        first_seen.alias("first_seen"),
        last_seen.alias("last_seen"),
        F.lit(None).cast("string").alias("previous_id"),
    )
    known = None
    if previous is not None:
        # A value the previous map cut as blocked or shared stays cut however the map grows (counts only grow).
        for_good = F.coalesce(F.col("cut_rule").isin(RULE_BLOCKED, RULE_SHARED), F.lit(False))
        cap_cut = F.coalesce(F.col("cut_rule") == RULE_PROFILE_CAP, F.lit(False))
        known = previous.select(
            *keys,
            "first_seen",
            "last_seen",
            F.col("customer_id").alias("previous_id"),
            for_good.alias("cut_for_good"),
            cap_cut.alias("capped"),
        )
    if erased is not None:
        tombstones = F.broadcast(erased.select("id_type", "id_value").distinct())
        gone = fresh.select(*keys) if known is None else fresh.select(*keys).unionByName(known.select(*keys))
        gone_records = gone.join(tombstones, ["id_type", "id_value"], "left_semi").select("record_id").distinct()
        fresh = fresh.join(gone_records, "record_id", "left_anti")
        if known is not None:
            erased_customers = known.join(gone_records, "record_id", "left_semi").select("previous_id")
            known = known.join(gone_records, "record_id", "left_anti")
    else:
        erased_customers = None
    # An incremental run meets a few changed rows with the whole map: those few, when at most MAX_BROADCAST_ROWS, go
    # to every task, so the map is read where it lies instead of being shuffled to meet them at each step.
    few_fresh = few_touched = False
    near = None  # TOUCHED: the previous map's rows the observations reach, flagged by how (one read of the map).
    if known is not None and scope is IdentityScope.TOUCHED:
        fresh = materialise(per_key(fresh), reliable=True)
        few_fresh = is_few(fresh)
        by_record = fresh.select(
            "record_id", F.lit(True).alias(_FRESH_RECORD), F.lit(None).cast("boolean").alias(_RESTATED)
        )
        if restated is not None:
            by_record = by_record.unionByName(
                restated.select(
                    "record_id", F.lit(None).cast("boolean").alias(_FRESH_RECORD), F.lit(True).alias(_RESTATED)
                )
            )
        records_said = materialise(
            by_record.groupBy("record_id").agg(
                F.max(_FRESH_RECORD).alias(_FRESH_RECORD), F.max(_RESTATED).alias(_RESTATED)
            ),
            reliable=True,
        )
        values_said = fresh.select("id_type", "id_value").distinct().withColumn(_FRESH_VALUE, F.lit(True))
        flagged = known.join(broadcast_if(records_said, is_few(records_said)), "record_id", "left").join(
            broadcast_if(values_said, few_fresh), ["id_type", "id_value"], "left"
        )
        reach = F.lit(False)
        for flag in (_FRESH_RECORD, _RESTATED, _FRESH_VALUE, "capped"):
            reach = reach | F.coalesce(F.col(flag), F.lit(False))
        near = materialise(flagged.where(reach), reliable=True)
    elif restated is not None:
        restated = restated.select("record_id").distinct()
    stale = None
    if known is not None and restated is not None:
        # A restated record is what its latest version says: the identifiers its new version no longer has leave the
        # map, as they would in a rebuild (which sees only latest versions); the ones it keeps keep their history.
        again = known.join(restated, "record_id", "left_semi") if near is None else near.where(F.col(_RESTATED))
        stale = again.select(*keys).join(broadcast_if(fresh.select(*keys), few_fresh), keys, "left_anti")
    few_stale = False
    if stale is not None and scope is IdentityScope.TOUCHED:
        # Read twice below; counted on its own (a record may hold many identifiers).
        stale = materialise(stale, reliable=True)
        few_stale = is_few(stale)
    usable = ~_blocked(chosen)
    touched = None
    population = fresh.select(*keys)
    if known is not None:
        still_held = known.select(*keys)
        if stale is not None:
            still_held = still_held.join(broadcast_if(stale, few_stale), keys, "left_anti")
        population = population.unionByName(still_held)
    if known is not None and near is not None:
        # The profiles holding a value or a record the run observed (a value a guard cut for good links no one).
        may_link = ~F.col("cut_for_good")
        by_value = near.where(may_link & F.col(_FRESH_VALUE)).select("previous_id")
        reached = by_value.union(near.where(F.col(_FRESH_RECORD)).select("previous_id"))
        if erased_customers is not None:
            reached = reached.union(erased_customers)
        capped_values = near.where(may_link & F.col("capped")).select("id_type", "id_value").distinct()
        touched = _close_over_capped(
            materialise(reached.distinct(), reliable=True), known.where(may_link), capped_values, chosen
        )
        few_touched = is_few(touched)
        known = known.join(broadcast_if(touched, few_touched), "previous_id", "left_semi")
        touched = touched.withColumnRenamed("previous_id", "customer_id")
    if known is not None and scope is IdentityScope.REBUILD:
        # Only what the observations still say; the previous map lends its ids and first sightings, in the one
        # aggregation by key of the observations and the previous rows together.
        said = F.lit(True).alias("_cdp_said")
        # A key with a null part is no key: it lends nothing (as a join on the keys would not match it).
        whole = F.lit(True)
        for name in keys:
            whole = whole & F.col(name).isNotNull()
        lent = known.where(whole).select(
            *keys, "first_seen", "last_seen", "previous_id", F.lit(False).alias("_cdp_said")
        )
        rows = fresh.select("*", said).unionByName(lent)
        population = fresh.select(*keys)
    else:
        if known is not None and stale is not None:
            known = known.join(stale, keys, "left_anti")
        rows = fresh if known is None else fresh.unionByName(known.drop("cut_for_good", "capped"))
    # Partitioned by identifier: the aggregation by key and, on a full refresh, the window by identifier below (the
    # counts) share one shuffle, and the window's order is the aggregation's.
    rows = rows.repartition("id_type", "id_value")
    if known is not None and scope is IdentityScope.REBUILD:
        links = per_key(rows, F.max("_cdp_said").alias("_cdp_said")).where("_cdp_said").drop("_cdp_said")
    else:
        links = per_key(rows)
    # ``records``: how many records hold the identifier, over the whole map (the shared-value guard's count, and
    # the audit's; an identifier two records hold may join them).
    values = None
    if touched is not None:  # The touched profiles' values, counted over the whole map.
        links = materialise(links, reliable=True)  # Read twice: for its values, then joined to their counts.
        values = links.select("id_type", "id_value").distinct()
        counted = _join_identifiers(population, broadcast_if(values, is_few(values)), "left_semi")
        counts = counted.groupBy("id_type", "id_value").agg(F.countDistinct("record_id").cast("long").alias("records"))
        links = _join_identifiers(links, counts, "left")
    else:
        # The population is what links holds: counted where its rows are, by a window rather than an aggregation
        # joined back. The records of a value: the rank of its largest record_id (a null one is no record).
        same_value = Window.partitionBy("id_type", "id_value")
        rank = F.dense_rank().over(same_value.orderBy(F.col("record_id").asc_nulls_first()))
        links = (
            links.withColumn("_cdp_rank", rank)
            .withColumn(
                "records",
                (
                    F.max("_cdp_rank").over(same_value)
                    - F.max(F.col("record_id").isNull().cast("int")).over(same_value)
                ).cast("long"),
            )
            .drop("_cdp_rank")
        )
    limit = _per_type(chosen, lambda rules: rules.max_records_per_value)
    # ``cut``: the guard that keeps an identifier from linking (null: it links). An identifier without a type is
    # no shared value of any type.
    shared = F.col("id_type").isNotNull() & limit.isNotNull() & (F.col("records") > limit)
    links = links.withColumn("node", F.concat_ws(":", "id_type", "id_value")).withColumn(
        "cut", F.when(~usable, F.lit(RULE_BLOCKED)).when(shared, F.lit(RULE_SHARED))
    )
    links = materialise(links, reliable=True)

    # Each row with its component; a record none of whose identifiers may link is a component of its own. Computed
    # once: the profile cap, the ids' aggregation and the join that gives each row its id all read it.
    placed = materialise(_placed(links, _components(links, chosen)), reliable=True)
    capped = _over_cap(placed.filter(F.col("cut").isNull()), chosen).cache()
    if not capped.isEmpty():
        placed = _recut(placed, capped, chosen)
    capped.unpersist()
    resolved = materialise(placed.join(_customer_ids(placed), "component"), reliable=True)
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
        .select(F.col("cut").alias("rule"), "id_type", "id_value", F.col("records").alias("records_affected"))
        .distinct()
        .withColumn("run_id", F.lit(run_id))
    )
    # The audit and the merges are small and each is read twice (written, then counted for the quality report):
    # checkpointed lazily, so the second read costs no shuffle.
    return IdentityResolution(
        identity_map=identity_map,
        records=resolved.select("record_id", "source", "customer_id").distinct(),
        merges=materialise(_merges(resolved, run_id, resolved_at), reliable=True, eager=False),
        audit=materialise(audit, reliable=True, eager=False),
        touched=touched,
        values=values,
    )


def _close_over_capped(
    touched: DataFrame, may_link: DataFrame, capped_values: DataFrame, settings: IdentitySettings
) -> DataFrame:
    """``touched`` (``previous_id``) with every earlier profile that shares, directly or through others, a value the
    profile cap cut in one of them (``capped_values``: every such value of ``may_link``, the previous map's rows no
    guard cut for good). The cap cut it within the profiles of one component, which a run on everything links first
    and then cuts again; resolving only some of them would cap a smaller component, and differently."""
    from pyspark.sql import functions as F

    if capped_values.isEmpty():
        return touched
    # The rounds only ever follow values the cap cut somewhere: the map's rows holding one are all the rounds read
    # (a few, however large the map), found in one pass.
    sharing = materialise(
        may_link.join(broadcast_if(capped_values, is_few(capped_values)), ["id_type", "id_value"], "left_semi").select(
            "id_type", "id_value", "previous_id", "capped"
        ),
        reliable=True,
    )
    capped = sharing.filter(F.col("capped"))
    for _ in range(settings.max_rounds):
        values = capped.join(touched, "previous_id", "left_semi").select("id_type", "id_value").distinct()
        further = (
            sharing.join(values, ["id_type", "id_value"], "left_semi")
            .select("previous_id")
            .distinct()
            .join(touched, "previous_id", "left_anti")
        )
        if further.isEmpty():
            return touched
        touched = materialise(touched.unionByName(further), reliable=True)
    raise IdentityError(
        f"the profiles sharing values cut by the profile cap did not close within {settings.max_rounds} rounds; "
        "raise identity max_rounds"
    )


def _join_identifiers(left: DataFrame, right: DataFrame, how: str) -> DataFrame:
    """``left`` joined to ``right`` on ``id_type, id_value``, a null value matching a null (the audit counts them)."""
    from pyspark.sql import functions as F

    other = right.withColumnRenamed("id_type", "_cdp_type").withColumnRenamed("id_value", "_cdp_value")
    same = F.col("id_type").eqNullSafe(F.col("_cdp_type")) & F.col("id_value").eqNullSafe(F.col("_cdp_value"))
    joined = left.join(other, same, how)
    return joined if how in ("left_semi", "left_anti") else joined.drop("_cdp_type", "_cdp_value")


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
    """``record_id, component`` for every record holding an identifier that may link: records sharing one, directly
    or through others, are one component (one person), named by its smallest identifier.

    Only an identifier two or more records hold (``records``, counted over the whole map) can join records, so the
    graph is made of those alone, each record linking its joining identifiers to the smallest of them. Identifiers
    that one record holds (most provider ids, most phones) never reach connected components: of the benchmark's
    1,000,000 raw records, about 140,000 edges are left of 2.4 million identifier rows, few enough for the union-find
    in one task instead of the rounds. The name is the one a graph of every identifier would give (the smallest of its
    records' smallest identifiers): it decides which part of a split profile keeps the profile's id.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    linking = links.filter(F.col("cut").isNull() & F.col("record_id").isNotNull())
    joining = F.col("records") >= 2
    per_record = materialise(
        linking.select("record_id", "node", F.when(joining, F.col("node")).alias("joining"))
        .groupBy("record_id")
        .agg(F.min("node").alias("anchor"), F.collect_list("joining").alias("joining")),  # Nulls are left out.
        reliable=True,
    )
    hub = F.array_min("joining")
    edges = (
        per_record.filter(F.size("joining") > 1)
        .select(F.explode("joining").alias("src"), hub.alias("dst"))
        .filter(F.col("src") != F.col("dst"))
    )
    labels = connected_components(edges, checkpoint_every=settings.checkpoint_every, max_rounds=settings.max_rounds)
    # A hub in no edge (its records share no other joining identifier) is its own component; a record without a hub
    # (sharing nothing) is one alone.
    hubs = per_record.select("record_id", "anchor", hub.alias("hub"))
    joined = hubs.join(labels.withColumnRenamed("node", "hub"), "hub", "left").withColumn(
        "joined", F.coalesce("component", "hub", "anchor")
    )
    named = joined.select("record_id", F.min("anchor").over(Window.partitionBy("joined")).alias("component"))
    return materialise(named, reliable=True, eager=False)


def _placed(links: DataFrame, labels: DataFrame) -> DataFrame:
    """``links`` with each row's ``component`` from ``labels``; a record without a label, its own record node."""
    from pyspark.sql import functions as F

    return links.join(labels, "record_id", "left").withColumn(
        "component", F.coalesce("component", F.concat(F.lit(RECORD_NODE_PREFIX), "record_id"))
    )


def _recut(placed: DataFrame, capped: DataFrame, settings: IdentitySettings) -> DataFrame:
    """``placed`` once the profile cap cut the ``capped`` identifiers: only a component that held one can split, so
    only its records are resolved again (a small graph); every other row keeps its component. The cut identifiers and
    the split components' records are few: sent to every task, the rows are updated where they lie, in one pass."""
    from pyspark.sql import functions as F

    cut_here = materialise(
        capped.select("id_type", "id_value", F.lit(RULE_PROFILE_CAP).alias("_cdp_cap")).distinct(), reliable=True
    )
    cut_here = broadcast_if(cut_here, is_few(cut_here))
    split = placed.join(cut_here, ["id_type", "id_value"], "left_semi").select("component").distinct()
    affected = materialise(placed.join(split, "component", "left_semi").select("record_id").distinct(), reliable=True)
    few = is_few(affected)

    def with_cut(rows: DataFrame) -> DataFrame:
        joined = rows.join(cut_here, ["id_type", "id_value"], "left")
        return joined.withColumn("cut", F.coalesce("cut", "_cdp_cap")).drop("_cdp_cap")

    again = _components(with_cut(placed.join(broadcast_if(affected, few), "record_id", "left_semi")), settings)
    moved = affected.join(again.withColumnRenamed("component", "_cdp_again"), "record_id", "left")
    moved = moved.withColumn("_cdp_moved", F.lit(True))
    own = F.concat(F.lit(RECORD_NODE_PREFIX), "record_id")
    component = F.when(F.col("_cdp_moved"), F.coalesce("_cdp_again", own)).otherwise(F.col("component"))
    recut = with_cut(placed).join(broadcast_if(moved, few), "record_id", "left")
    return materialise(recut.withColumn("component", component).drop("_cdp_again", "_cdp_moved"), reliable=True)


def _over_cap(linking: DataFrame, settings: IdentitySettings) -> DataFrame:
    """The identifiers beyond their type's cap in their profile: ``id_type, id_value, records`` (``linking``: the
    rows no guard cut, with their ``component``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cap = _per_type(settings, lambda rules: rules.max_values_per_profile)
    values = (
        linking.filter(cap.isNotNull() & F.col("record_id").isNotNull())  # Types without a cap need no ranking.
        .groupBy("component", "id_type", "id_value")
        .agg(F.max("last_seen").alias("last_seen"), F.countDistinct("record_id").alias("records"))
    )
    order = Window.partitionBy("component", "id_type").orderBy(
        F.col("last_seen").desc_nulls_last(), F.col("records").desc(), F.col("id_value")
    )
    ranked = values.withColumn("rank", F.row_number().over(order))
    return ranked.filter(cap.isNotNull() & (F.col("rank") > cap)).select("id_type", "id_value", "records")


def _customer_ids(placed: DataFrame) -> DataFrame:
    """``component, customer_id``: the earlier id born first that the component holds, else ``cus_`` + a hash of the
    component's earliest identifier.

    A profile is born with its earliest linking identifier (``first_seen``, then the smallest node; a record that
    links nothing: its record node). Because a new profile's id hashes that same identifier, the id that survives a
    merge is the one a single run over all the data would have given, when the earliest identifier came first.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    linking = F.when(F.col("cut").isNull(), F.struct(F.col("first_seen").alias("at"), F.col("node").alias("node")))
    # Each (component, earlier id) pair's earliest linking identifier and first sighting, in one pass over the rows:
    # the component's birth and each earlier profile's are the earliest of their pairs'.
    pairs = materialise(
        placed.groupBy("component", "previous_id").agg(
            F.min(linking).alias("linked"), F.min("first_seen").alias("first_seen")
        ),
        reliable=True,
    )
    fallback = F.struct(F.min("first_seen").alias("at"), F.min("component").alias("node"))
    births = pairs.groupBy("component").agg(F.coalesce(F.min("linked"), fallback).alias("birth"))
    earlier = pairs.filter(F.col("previous_id").isNotNull())
    born = earlier.groupBy("previous_id").agg(
        F.coalesce(
            F.min("linked"), F.struct(F.min("first_seen").alias("at"), F.min("previous_id").alias("node"))
        ).alias("born")
    )
    held = earlier.select("component", "previous_id").join(born, "previous_id")
    oldest = Window.partitionBy("component").orderBy(F.col("born").asc_nulls_last(), "previous_id")
    candidates = held.withColumn("rank", F.row_number().over(oldest)).filter("rank = 1")
    # A guard may now split an earlier profile: its id stays with one part only (the smallest component).
    once = Window.partitionBy("previous_id").orderBy("component")
    survivors = candidates.withColumn("rank", F.row_number().over(once)).filter("rank = 1")

    def hashed(value: Column) -> Column:
        return F.concat(F.lit(CUSTOMER_ID_PREFIX), F.substring(F.sha2(value, 256), 1, 24))

    # A part split off an earlier profile (a record's new version dropped the identifier that linked them) may be born
    # from the identifier that profile was born from: its hash is the id the other part keeps, so it hashes its birth
    # identifier with its own smallest node instead.
    kept = survivors.select(F.col("previous_id").alias("kept_id")).distinct()
    placed_ids = births.join(survivors.select("component", "previous_id"), "component", "left").join(
        kept, hashed(F.col("birth.node")) == F.col("kept_id"), "left"
    )
    born_anew = F.when(F.col("kept_id").isNull(), hashed(F.col("birth.node"))).otherwise(
        hashed(F.concat_ws("|", F.col("birth.node"), F.col("component")))
    )
    return placed_ids.select("component", F.coalesce("previous_id", born_anew).alias("customer_id"))


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


def identity_map_snapshot(catalog: SqlCatalog, tenant: str) -> int | None:
    """The id of the tenant's identity map's current snapshot, or None before its first commit."""
    from plugins.transforms.catalog import table_identifier

    identifier = table_identifier(tenant, IDENTITY_MAP_TABLE)
    if not catalog.table_exists(identifier):
        return None
    snapshot = catalog.load_table(identifier).current_snapshot()
    return None if snapshot is None else snapshot.snapshot_id


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

    A resolution of the whole map replaces every file; one of the profiles a run touched (``resolution.touched``)
    replaces only the map files holding their rows (the files' other rows are copied beside the new ones),
    and in the audit only the rows of its identifiers. The map commits last: a crash before it leaves the previous
    map, and the next run finds the same merges again (a merge may then be recorded twice; deleting a merged-away id
    downstream is idempotent). ``raw_files`` are the raw-zone keys the observations came from, recorded with the
    map's snapshot.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    merges_table = create_table(catalog, tenant, IDENTITY_MERGES_TABLE, resolution.merges.schema)
    merges = None
    if not resolution.merges.isEmpty():
        merges = commit_files(merges_table, add=write_data_files(resolution.merges, merges_table, run_id=run_id))
    audit_table = create_table(catalog, tenant, IDENTITY_AUDIT_TABLE, resolution.audit.schema)
    map_table = create_table(
        catalog, tenant, IDENTITY_MAP_TABLE, resolution.identity_map.schema, IDENTITY_MAP_PARTITIONING
    )
    if resolution.touched is None or resolution.values is None:
        audit = _replace(audit_table, resolution.audit, run_id, ())
        identity_map = _replace(map_table, resolution.identity_map, run_id, raw_files)
    else:
        spark = resolution.identity_map.sparkSession
        kept_audit = read_table(spark, audit_table).drop(DATA_FILE_COLUMN)
        kept_audit = _join_identifiers(kept_audit, resolution.values, "left_anti")
        audit = _replace(audit_table, kept_audit.unionByName(resolution.audit), run_id, ())
        touched_profiles = resolution.touched

        def holding_touched() -> list[str]:
            """The paths of the map's files holding a touched profile's rows (never the rows)."""
            current = read_table(spark, map_table)
            hit = current.join(touched_profiles, "customer_id", "left_semi").select(DATA_FILE_COLUMN).distinct()
            return sorted(row[DATA_FILE_COLUMN] for row in hit.collect())

        fresh = resolution.identity_map.where(F.col("customer_id").isNotNull())
        if is_few(resolution.touched):
            # The files to rewrite are those of the touched profiles' buckets (the map is bucketed by customer_id),
            # named by the manifests. Their rows of untouched profiles are copied as they are (rows without a
            # customer_id dropped, as below), and the new rows join the copies of their buckets.
            touched = resolution.touched.select("customer_id").toArrow()
            found = files_in_partitions_of(map_table, touched)
            files = holding_touched() if found is None else found
            no_id = pa.table([pa.nulls(1, touched.schema[0].type)], schema=touched.schema)
            dropped = pa.concat_tables([touched, no_id])
            written = write_data_files(fresh, map_table, run_id=run_id)
            added = sorted(rewrite_keeping_rows(spark, map_table, files, written, dropped, run_id=run_id))
        else:
            files = holding_touched()
            others = read_data_files(spark, map_table, files).drop(DATA_FILE_COLUMN)
            others = others.join(resolution.touched, "customer_id", "left_anti")
            rewritten = others.unionByName(fresh).where(F.col("customer_id").isNotNull())
            added = write_data_files(rewritten, map_table, run_id=run_id)
        identity_map = commit_files(map_table, add=added, remove=files, raw_files=raw_files)
    log_event(
        logger,
        "identity_committed",
        tenant=tenant,
        run_id=run_id,
        map_snapshot=identity_map.snapshot_id,
        map_files_replaced=identity_map.removed_files,
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
    also: Sequence[Column] = (),
) -> DataFrame:
    """One row per ``key`` with each of ``fields`` picked from ``candidates`` (columns ``key``, ``source``,
    ``updated_at`` and the fields), by :class:`SurvivorshipSettings`. Fields must be of orderable types. ``also``:
    more aggregates over the same rows, computed in the same aggregation."""
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
    return candidates.groupBy(key).agg(*picks, *also)


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
    "IdentityScope",
    "IdentitySettings",
    "SurvivorshipSettings",
    "commit_identity",
    "connected_components",
    "default_type_rules",
    "identity_map_snapshot",
    "load_identity_map",
    "resolve_identities",
    "survive_fields",
]
