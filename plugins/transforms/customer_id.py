"""The unified ``customer_id`` of rows that name their customer by a provider identifier or an email.

Orders and events say who they are about with ``customer_id_type``, ``customer_id_value`` (``stripe_customer``,
``cus_123``) and ``email``; the identity map of identity resolution (``id_type``, ``id_value``, ``customer_id``)
turns them into the person's ``customer_id``. ``customer_metrics`` and ``customer_events`` both map them this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def with_customer_id(df: DataFrame, identity_map: DataFrame | None) -> DataFrame:
    """``df`` (with ``customer_id_type``, ``customer_id_value`` and ``email``) with its ``customer_id``.

    The provider identifier is looked up first, then the email; rows neither finds keep their typed identifier
    (``stripe_customer:cus_123``), and rows with neither have none (null). Only linked identifiers count: a value a
    guard cut (a shared inbox) names no one in particular.
    """
    from pyspark.sql import functions as F

    own = F.when(
        F.col("customer_id_value").isNotNull(), F.concat_ws(":", F.col("customer_id_type"), F.col("customer_id_value"))
    )
    if identity_map is None:
        return df.withColumn("customer_id", own)
    if "linked" in identity_map.columns:
        identity_map = identity_map.where(F.col("linked"))
    ids = identity_map.select(
        F.col("id_type").alias("_cdp_map_type"), F.col("id_value").alias("_cdp_map_value"), "customer_id"
    ).dropDuplicates(["_cdp_map_type", "_cdp_map_value"])
    by_id = ids.withColumnRenamed("customer_id", "_cdp_by_id")
    by_email = ids.where(F.col("_cdp_map_type") == "email").select(
        F.col("_cdp_map_value").alias("_cdp_map_email"), F.col("customer_id").alias("_cdp_by_email")
    )
    joined = df.join(
        by_id,
        (F.col("customer_id_type") == F.col("_cdp_map_type")) & (F.col("customer_id_value") == F.col("_cdp_map_value")),
        "left",
    ).join(by_email, F.col("email") == F.col("_cdp_map_email"), "left")
    return joined.withColumn("customer_id", F.coalesce("_cdp_by_id", "_cdp_by_email", own)).drop(
        "_cdp_map_type", "_cdp_map_value", "_cdp_by_id", "_cdp_map_email", "_cdp_by_email"
    )


__all__ = ["with_customer_id"]
