"""The ``customer_events`` table: each event of the ``events`` table that names a customer, under the unified
``customer_id``, with its payload as ``properties``: what segments' behavioural criteria count.

Events name their customer by a provider identifier (``customer_id_type``, ``customer_id_value``) and by email; the
identity map turns them into the unified ``customer_id`` exactly as ``customer_metrics`` does
(``plugins.transforms.customer_id.with_customer_id``): the provider identifier first, then the email, else the typed
identifier (``stripe_customer:cus_123``). Events that name no one are left out.

``customers`` is an input so that this runs after identity resolution and again whenever profiles merge: a merge
moves a person's older events to the surviving id, so the table is recomputed whole (``complete``) on every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.transforms.customer_id import with_customer_id
from plugins.transforms.identity import IDENTITY_MAP_TABLE
from plugins.transforms.quality import QualityRule, Required

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from plugins.transforms.run import TransformRun

OUTPUT_COLUMNS = ("event_id", "customer_id", "type", "occurred_at", "properties")
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("event_id"),
    Required("customer_id"),
    Required("type"),
    Required("occurred_at"),
)


def customer_events(
    *,
    events: DataFrame,
    customers: DataFrame | None = None,
    identity_map: DataFrame | None = None,
    run: TransformRun | None = None,
) -> DataFrame:
    """The events that name a customer, as ``event_id, customer_id, type, occurred_at, properties``.

    Run by the runner, the identity map is the one the ``customers`` transform committed; it is not read otherwise.
    """
    from pyspark.sql import functions as F

    del customers  # An input for its order and its changes; the identity map says who is who.
    if identity_map is None and run is not None:
        identity_map = run.table(IDENTITY_MAP_TABLE)
    mapped = with_customer_id(events, identity_map).where(F.col("customer_id").isNotNull())
    return mapped.select("event_id", "customer_id", "type", "occurred_at", F.col("payload").alias("properties"))
