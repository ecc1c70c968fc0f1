"""What the runner hands a transform function beyond its input DataFrames, and what a function may return.

A function takes its inputs as keyword arguments (``RawInput.keyword``, ``TableInput.table``). It may also declare a
keyword parameter ``run``; the runner then passes the :class:`TransformRun` of this run, which stateful transforms
(``customers``: the identity map) need and plain ones ignore.

Inputs, incremental mode: a raw input is the rows of the subject's pending raw files (not yet processed by this
output table); a table input is the upstream table's current snapshot, whole (Spark reads it lazily), and
``run.changed(table)`` the rows that changed since this output last read it: the rows of the data files added to it
that came from raw batches it processed since (a merge rewrites whole files, unchanged neighbours included). On a
full refresh every raw file is read and ``run.changed`` gives the whole upstream table.

Output: a DataFrame of rows keyed by the descriptor's ``key``, merged into the table (the latest ``updated_at`` wins,
ties to the later raw file) — or, from a transform whose inputs are all tables, the whole table, which replaces the
previous one. A :class:`TransformOutput` says so explicitly and can delete keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from plugins.transforms.identity import IdentitySettings, SurvivorshipSettings

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class TransformSettings:
    """Settings of a tenant's transforms. ``default_region``: the ISO 3166 alpha-2 region a phone number without a
    country code is read in (None: such numbers are rejected as invalid)."""

    default_region: str | None = None
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    survivorship: SurvivorshipSettings = field(default_factory=SurvivorshipSettings)


@dataclass(frozen=True)
class TransformRun:
    """One transform's run for one tenant.

    ``table(name)``: a processed table of this tenant as committed now (None before its first commit).
    ``changed(name)``: for a table input, the rows of the data files added to it since this output last read it,
    restricted to rows from raw batches it processed since when the table keeps its lineage column
    (on a full refresh or the first run: all of it; None if the table does not exist).
    ``recorded(name)``: the property ``name`` this output's current snapshot was committed with
    (:attr:`TransformOutput.properties`; a maintenance snapshot, which changes no row, carries its parent's), or None.
    """

    spark: SparkSession
    tenant: str
    run_id: str
    started_at: datetime
    full_refresh: bool
    catalog: SqlCatalog
    settings: TransformSettings
    table: Callable[[str], DataFrame | None]
    changed: Callable[[str], DataFrame | None]
    #: Free-form counters a transform adds to its quality report (``identity.shared_value``: 3).
    counters: dict[str, int] = field(default_factory=dict)
    recorded: Callable[[str], str | None] = lambda name: None


@dataclass(frozen=True)
class TransformOutput:
    """A function's result when a plain DataFrame does not say enough.

    ``rows``: rows to upsert by key. ``deleted_keys``: key columns of rows to remove (a merged-away customer).
    ``complete``: ``rows`` is the whole table; everything else is removed. ``properties``: the transform's own
    bookkeeping (text names and values), recorded in the summary of the snapshot that commits these rows (under
    ``cdp.transform.``, apart from the framework's and Iceberg's own) and read back by the next run with
    ``TransformRun.recorded``.
    """

    rows: DataFrame
    deleted_keys: DataFrame | None = None
    complete: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)


__all__ = ["TransformOutput", "TransformRun", "TransformSettings"]
