"""The ``customer_metrics`` table: the design's computed values per customer and currency.

From the ``orders`` table's revenue rows (``is_revenue``): lifetime value (net of refunds), order count, average
order value, first and last order, days since the last order; from the ``events`` table: an engagement score.
Money stays in its currency: a customer who paid in EUR and in USD has one row per currency (each with the same
engagement), never a sum across currencies. A customer with events and no orders has one row with the currency
``XXX`` (ISO 4217: no currency).

Orders and events name their customer by a provider identifier (``customer_id_type``, ``customer_id_value``) and by
email; the identity map of identity resolution (``id_type``, ``id_value``, ``customer_id``) turns them into the
unified ``customer_id`` (``plugins.transforms.customer_id.with_customer_id``). Without the map, a customer is their
typed identifier (``stripe_customer:cus_123``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from plugins.transforms.customer_id import with_customer_id
from plugins.transforms.identity import IDENTITY_MAP_TABLE
from plugins.transforms.money import MONEY_TYPE
from plugins.transforms.quality import Format, QualityRule, Range, Required

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from plugins.transforms.run import TransformRun

ENGAGEMENT_WINDOW_DAYS = 90
#: ISO 4217's code for "no currency involved": the row of a customer with events and no revenue order. A key column
#: stays non-null, as the serving stores' primary keys and document ids need.
NO_CURRENCY = "XXX"
ENGAGEMENT_HALF_LIFE_DAYS = 30  # An event counts half as much 30 days later.
ENGAGEMENT_SATURATION = 10.0  # About ten fresh events score 63; the score approaches 100 and never reaches it.
OUTPUT_COLUMNS = (
    "customer_id",
    "currency",
    "lifetime_value",
    "order_count",
    "average_order_value",
    "first_order_at",
    "last_order_at",
    "days_since_last_order",
    "events_90d",
    "engagement_score",
    "computed_at",
)
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("customer_id"),
    Format("currency", "^[A-Z]{3}$"),
    Range("order_count", minimum=0),
    Range("engagement_score", minimum=0, maximum=100),
)


def engagement_score(event_weight_sum: Column) -> Column:
    """0-100 from the sum of the events' recency weights: ``100 * (1 - exp(-sum / 10))``, one decimal."""
    from pyspark.sql import functions as F

    return F.round(F.lit(100.0) * (F.lit(1.0) - F.exp(-event_weight_sum / F.lit(ENGAGEMENT_SATURATION))), 1)


def customer_metrics(
    *,
    orders: DataFrame,
    events: DataFrame | None = None,
    customers: DataFrame | None = None,
    identity_map: DataFrame | None = None,
    as_of: datetime | None = None,
    run: TransformRun | None = None,
) -> DataFrame:
    """The metrics of every customer with a revenue order or an event, as of ``as_of`` (now by default, UTC).

    Run by the runner, the identity map is the one the ``customers`` transform committed (``customers`` is an input
    so that this runs after it, and again when profiles merge); it is not read otherwise.
    """
    from pyspark.sql import functions as F

    del customers  # An input for its order and its changes; the identity map says who is who.
    if identity_map is None and run is not None:
        identity_map = run.table(IDENTITY_MAP_TABLE)

    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)  # Naive means UTC, whatever the machine's local zone.
    now = F.lit(as_of).cast("timestamp") if as_of is not None else F.current_timestamp()
    revenue = with_customer_id(orders.where(F.col("is_revenue")), identity_map).where(F.col("customer_id").isNotNull())
    net = (F.col("amount") - F.coalesce(F.col("refunded_amount"), F.lit(0).cast(MONEY_TYPE))).cast(MONEY_TYPE)
    money = revenue.groupBy("customer_id", "currency").agg(
        F.sum(net).cast(MONEY_TYPE).alias("lifetime_value"),
        F.count(F.lit(1)).alias("order_count"),
        F.min("ordered_at").alias("first_order_at"),
        F.max("ordered_at").alias("last_order_at"),
    )
    money = money.withColumn(
        "average_order_value", (F.col("lifetime_value") / F.col("order_count")).cast(MONEY_TYPE)
    ).withColumn("days_since_last_order", F.datediff(now, F.col("last_order_at")))
    if events is not None:
        age_days = (F.unix_timestamp(now) - F.unix_timestamp(F.col("occurred_at"))) / F.lit(86400.0)
        recent = with_customer_id(events, identity_map).where(
            F.col("customer_id").isNotNull()
            & (F.col("occurred_at") <= now)
            & (F.col("occurred_at") > now - F.expr(f"INTERVAL {ENGAGEMENT_WINDOW_DAYS} DAYS"))
        )
        engagement = recent.groupBy("customer_id").agg(
            F.count(F.lit(1)).alias("events_90d"),
            engagement_score(F.sum(F.pow(F.lit(0.5), age_days / F.lit(ENGAGEMENT_HALF_LIFE_DAYS)))).alias(
                "engagement_score"
            ),
        )
    else:
        engagement = money.sparkSession.createDataFrame(
            [], "customer_id string, events_90d long, engagement_score double"
        )
    combined = money.join(engagement, "customer_id", "full_outer")
    return combined.select(
        "customer_id",
        F.coalesce(F.col("currency"), F.lit(NO_CURRENCY)).alias("currency"),
        "lifetime_value",
        F.coalesce(F.col("order_count"), F.lit(0)).alias("order_count"),
        "average_order_value",
        "first_order_at",
        "last_order_at",
        "days_since_last_order",
        F.coalesce(F.col("events_90d"), F.lit(0)).alias("events_90d"),
        F.coalesce(F.col("engagement_score"), F.lit(0.0)).alias("engagement_score"),
        now.alias("computed_at"),
    )
