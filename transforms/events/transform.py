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


# SendGrid's event names in the campaign feedback vocabulary (delivered, opened, clicked, bounced, complained,
# unsubscribed, converted); others (processed, deferred, group_resubscribe) keep SendGrid's name.
SENDGRID_TYPES = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "dropped": "bounced",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}
# (provider, drained stream) of the campaign feedback webhooks (taps/campaign_events/webhook.py).
CAMPAIGN_FEEDBACK_STREAMS = {("campaign-events", "campaign_events"), ("sendgrid", "email_events")}


def _campaign_feedback(df: DataFrame, provider: str) -> DataFrame:
    """Campaign feedback events in one shape: ``type`` from the feedback vocabulary, ``customer_id_value`` the
    campaign's customer id, ``payload`` the JSON ``{campaign, variant, bounce_type, revenue, currency, reason}`` that
    campaign_metrics (activators/campaigns/metrics.py) reads."""
    from pyspark.sql import functions as F

    received = timestamp_utc(field_or_null(df, "_webhook_received_at"))["value"]
    if provider == "sendgrid":
        event = field_or_null(df, "event")
        mapping = F.create_map(*[F.lit(part) for pair in SENDGRID_TYPES.items() for part in pair])
        event_type = F.coalesce(mapping[event], event)
        occurred = timestamp_utc(field_or_null(df, "timestamp", "long"))["value"]
        # SendGrid's `type` on a bounce: `bounce` is permanent (hard), `blocked` temporary (soft); a `dropped`
        # message was never sent (SendGrid's own suppression or an invalid address): treated as hard.
        bounce = F.when(event == "dropped", F.lit("hard")).when(
            event == "bounce",
            F.when(field_or_null(df, "type") == "blocked", F.lit("soft")).otherwise(F.lit("hard")),
        )
        revenue = F.lit(None).cast("double")
        currency = F.lit(None).cast("string")
        reason = field_or_null(df, "reason")
    else:
        event_type = field_or_null(df, "type")
        occurred = timestamp_utc(field_or_null(df, "occurred_at"))["value"]
        bounce = field_or_null(df, "bounce_type")
        revenue = field_or_null(df, "revenue", "double")
        currency = field_or_null(df, "currency")
        reason = F.lit(None).cast("string")
    payload = F.to_json(
        F.struct(
            field_or_null(df, "campaign").alias("campaign"),
            F.coalesce(field_or_null(df, "variant"), F.lit("")).alias("variant"),
            bounce.alias("bounce_type"),
            revenue.alias("revenue"),
            currency.alias("currency"),
            reason.alias("reason"),
        )
    )
    return _rows(
        df,
        provider=provider,
        channel="webhook",
        event_id=field_or_null(df, "_webhook_event_id"),
        event_type=event_type,
        object_type=F.lit("campaign_event"),
        object_id=field_or_null(df, "campaign"),
        customer=field_or_null(df, "customer_id"),
        email_address=field_or_null(df, "email"),
        occurred_at=F.coalesce(occurred, received),
        received_at=received,
        payload=payload,
    )


def _webhook(df: DataFrame, provider: str, stream: str) -> DataFrame:
    from pyspark.sql import functions as F

    if (provider, stream) in CAMPAIGN_FEEDBACK_STREAMS:
        return _campaign_feedback(df, provider)

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
