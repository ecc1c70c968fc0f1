"""The ``events`` table: Stripe's events (from its API) and every webhook event drained into the raw zone.

One row per event, keyed ``event_id`` = ``provider:id``. An event that arrived both ways (a Stripe event listed by
the API and delivered by webhook has the same ``evt_`` id) is one row, the API's, which carries the payload.

Webhook streams land with only the drained event's envelope declared in their schema (``_webhook_event_id``,
``_webhook_topic``, ``_webhook_received_at``): the payload's own fields are not read from the raw zone, so a
webhook event's ``customer_id_*``, ``email`` and ``payload`` are null until the webhook subjects declare them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.transforms.frames import TransformInputError, field_or_null, latest_per_key, union_all
from plugins.transforms.normalize import email, reason_column, timestamp_utc
from plugins.transforms.quality import Allowed, QualityRule, Required
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

WEBHOOK_ARGUMENT = "_webhook_"  # Webhook inputs arrive as keyword arguments named "<provider>_webhook_<stream>".
OUTPUT_COLUMNS = (
    "event_id",
    "provider",
    "channel",
    "type",
    "object_type",
    "object_id",
    "customer_id_type",
    "customer_id_value",
    "email",
    "occurred_at",
    "received_at",
    "payload",
)
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("event_id"),
    Required("type"),
    Required("occurred_at"),
    Allowed("channel", ("api", "webhook")),
)


def _rows(
    df: DataFrame,
    *,
    provider: str,
    channel: str,
    event_id: Column,
    event_type: Column,
    object_type: Column,
    object_id: Column,
    customer: Column,
    email_address: Column,
    occurred_at: Column,
    received_at: Column,
    payload: Column,
) -> DataFrame:
    from pyspark.sql import functions as F

    normalized = email(email_address)
    return df.select(
        F.concat_ws(":", F.lit(provider), event_id).alias("event_id"),
        F.lit(provider).alias("provider"),
        F.lit(channel).alias("channel"),
        event_type.cast("string").alias("type"),
        object_type.cast("string").alias("object_type"),
        object_id.cast("string").alias("object_id"),
        F.when(customer.isNotNull(), F.lit(f"{provider}_customer")).alias("customer_id_type"),
        customer.cast("string").alias("customer_id_value"),
        normalized["value"].alias("email"),
        occurred_at.alias("occurred_at"),
        received_at.alias("received_at"),
        payload.cast("string").alias("payload"),
        normalized["reason"].alias(reason_column("email")),
        field_or_null(df, SOURCE_FILE_COLUMN).alias(SOURCE_FILE_COLUMN),
    )


def _stripe_api(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    payload = field_or_null(df, "data.object")

    def path(json_path: str) -> Column:
        return F.get_json_object(payload, json_path)

    object_type = path("$.object")
    customer = F.when(object_type == "customer", path("$.id")).otherwise(path("$.customer"))
    return _rows(
        df,
        provider="stripe",
        channel="api",
        event_id=F.col("id"),
        event_type=field_or_null(df, "type"),
        object_type=object_type,
        object_id=path("$.id"),
        customer=customer,
        email_address=F.coalesce(
            path("$.email"), path("$.receipt_email"), path("$.customer_email"), path("$.billing_details.email")
        ),
        occurred_at=timestamp_utc(field_or_null(df, "created", "long"))["value"],
        received_at=field_or_null(df, "_sdc_extracted_at", "timestamp"),
        payload=payload,
    )


def _webhook(df: DataFrame, provider: str, stream: str) -> DataFrame:
    from pyspark.sql import functions as F

    received = timestamp_utc(field_or_null(df, "_webhook_received_at"))["value"]
    return _rows(
        df,
        provider=provider,
        channel="webhook",
        event_id=field_or_null(df, "_webhook_event_id"),
        event_type=field_or_null(df, "_webhook_topic"),
        object_type=F.lit(stream),
        object_id=F.lit(None).cast("string"),
        customer=F.lit(None).cast("string"),
        email_address=F.lit(None).cast("string"),
        occurred_at=received,
        received_at=received,
        payload=F.lit(None).cast("string"),
    )


def events(*, stripe_events: DataFrame | None = None, **webhooks: DataFrame | None) -> DataFrame:
    """Every event of the sources given, once each.

    ``webhooks`` are the drained webhook streams, each as ``<provider>_webhook_<stream>`` (``stripe_webhook_events``,
    ``shopify_webhook_orders``, ``salesforce_webhook_contact``...).
    """

    frames: list[DataFrame | None] = [_stripe_api(stripe_events)] if stripe_events is not None else []
    for argument, frame in sorted(webhooks.items()):
        provider, separator, stream = argument.partition(WEBHOOK_ARGUMENT)
        if not separator or not provider or not stream:
            raise TransformInputError(
                f"events() got '{argument}', which is not a webhook input named <provider>_webhook_<stream>"
            )
        if frame is not None:
            frames.append(_webhook(frame, provider, stream))
    everything = union_all(frames, "events")
    return latest_per_key(everything, ["event_id"], merge_order())


def merge_order() -> list[Column]:
    """Which copy of an event is kept: the API's (it carries the payload), then the first received, then the earlier
    raw file. The runner merges new events into the table by the same order (the descriptor's ``merge_order``)."""
    from pyspark.sql import functions as F

    return [
        (F.col("channel") == "api").desc(),
        F.col("received_at").asc_nulls_last(),
        F.col(SOURCE_FILE_COLUMN).asc_nulls_last(),
    ]
