"""Small DataFrame helpers the transforms share: optional columns, unions of sources, the latest row per key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


#: Up to this many rows, the small side of a join is sent to every task (a broadcast) instead of both sides being
#: shuffled: how an incremental run meets its few changed rows with a whole table without moving the table. A graph
#: of at most this many edges is also few enough for identity resolution to solve in one task.
MAX_BROADCAST_ROWS = 250_000


class TransformInputError(CdpError):
    """A transform was given none of its inputs, or an input without the columns it needs."""


def field_or_null(df: DataFrame, path: str, data_type: str = "string") -> Column:
    """The (dotted, nested) column ``path`` of ``df``, or a typed null when its schema lacks it.

    Sources differ in which fields they send (a Salesforce org without ``DoNotCall``, a stream before a schema
    version added a field); a missing field reads as null instead of failing the transform.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    node: StructType | None = df.schema
    for part in path.split("."):
        if node is None or part not in node.fieldNames():
            return F.lit(None).cast(data_type)
        child = node[part].dataType
        node = child if isinstance(child, StructType) else None
    return F.col(path)


def union_all(frames: Sequence[DataFrame | None], what: str) -> DataFrame:
    """The rows of every frame given (by column name); a TransformInputError when none was."""
    present = [frame for frame in frames if frame is not None]
    if not present:
        raise TransformInputError(f"{what}: no input has data yet; land at least one of its raw streams first")
    out = present[0]
    for frame in present[1:]:
        out = out.unionByName(frame)
    return out


def latest_per_key(df: DataFrame, key: Sequence[str], order: Sequence[Column]) -> DataFrame:
    """One row per ``key``: the first by ``order`` (e.g. ``updated_at`` descending), ties broken by ``order``'s end."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy(*key).orderBy(*order)
    return df.withColumn("_cdp_rank", F.row_number().over(window)).where(F.col("_cdp_rank") == 1).drop("_cdp_rank")


def broadcast_if(frame: DataFrame, few: bool) -> DataFrame:
    """``frame``, hinted to be sent whole to every task of its joins when ``few`` (at most ``MAX_BROADCAST_ROWS``)."""
    from pyspark.sql import functions as F

    return F.broadcast(frame) if few else frame


def is_few(frame: DataFrame) -> bool:
    """Whether ``frame`` has at most ``MAX_BROADCAST_ROWS`` rows (one job): few enough for :func:`broadcast_if`, or,
    as edges, for connected components in one task."""
    return frame.count() <= MAX_BROADCAST_ROWS


def materialise(frame: DataFrame, *, reliable: bool, eager: bool = True) -> DataFrame:
    """Checkpoint (cutting the lineage) when ``reliable``, else cache; either way the frame is computed once, now or
    (cached, or not ``eager``) by the next action."""
    if not reliable:
        return frame.cache()
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint(eager=eager)
    return frame.localCheckpoint(eager=eager)
