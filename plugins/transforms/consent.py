"""Consent per channel (email, SMS, ads) from what the sources say, the most recent statement winning.

Each source's records become *statements*: one row per (identifier, channel) with ``granted`` (true: the person
agreed; false: they refused or withdrew) and ``stated_at``. Identifiers are typed like identity resolution's
(``id_type``, ``id_value``), so the customers transform maps them to ``customer_id`` through the identity map and
then calls :func:`latest_consent`.

What counts as a statement:

- Shopify customers: ``defaultEmailAddress.marketingState`` (email) and ``defaultPhoneNumber.marketingState`` (SMS):
  ``SUBSCRIBED`` grants; ``NOT_SUBSCRIBED``, ``UNSUBSCRIBED``, ``PENDING`` (double opt-in not confirmed), ``INVALID``
  and ``REDACTED`` do not; ``dataSaleOptOut`` true refuses ads. Stated at the customer's ``updatedAt``.
- Salesforce Contacts and Leads: ``HasOptedOutOfEmail`` true refuses email, ``DoNotCall`` true refuses SMS (the
  phone channel). False is not a statement: "not opted out" is not consent, and a later unrelated edit of the record
  must not undo an unsubscribe made elsewhere. Stated at ``SystemModstamp``.
- Events: a type naming an unsubscribe (``unsubscribe``, ``unsubscribed``, ``opt_out``) refuses SMS when it names
  ``sms``, ads when it names ``ads``, email otherwise. Stated when the event occurred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from plugins.transforms.frames import field_or_null

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

CHANNELS = ("email", "sms", "ads")
STATEMENT_COLUMNS = ("id_type", "id_value", "channel", "granted", "stated_at", "source")
UNSUBSCRIBE_PATTERN = r"(?i)(unsubscri|opt[_ -]?out)"


def _statement(id_type: Column, id_value: Column, channel: str, granted: Column, at: Column, source: str) -> Column:
    from pyspark.sql import functions as F

    return F.struct(
        id_type.alias("id_type"),
        id_value.alias("id_value"),
        F.lit(channel).alias("channel"),
        granted.alias("granted"),
        at.cast("timestamp").alias("stated_at"),
        F.lit(source).alias("source"),
    )


def _explode(df: DataFrame, statements: list[Column]) -> DataFrame:
    from pyspark.sql import functions as F

    exploded = df.select(F.explode(F.array(*statements)).alias("s")).select("s.*")
    return exploded.where(F.col("granted").isNotNull() & F.col("id_value").isNotNull())


def shopify_statements(customers: DataFrame) -> DataFrame:
    """Consent statements of Shopify customers (the raw ``shopify/customers`` stream)."""
    from pyspark.sql import functions as F

    def marketing(path: str) -> Column:
        state = F.upper(field_or_null(customers, path))
        return F.when(state.isNotNull(), state == "SUBSCRIBED")

    who, at = F.lit("shopify_customer"), field_or_null(customers, "updatedAt")
    ads = F.when(field_or_null(customers, "dataSaleOptOut", "boolean"), F.lit(False))
    return _explode(
        customers,
        [
            _statement(who, F.col("id"), "email", marketing("defaultEmailAddress.marketingState"), at, "shopify"),
            _statement(who, F.col("id"), "sms", marketing("defaultPhoneNumber.marketingState"), at, "shopify"),
            _statement(who, F.col("id"), "ads", ads, at, "shopify"),
        ],
    )


def salesforce_statements(records: DataFrame, id_type: str) -> DataFrame:
    """Consent statements of Salesforce Contacts (``id_type="salesforce_contact"``) or Leads (``salesforce_lead``)."""
    from pyspark.sql import functions as F

    def opted_out(name: str) -> Column:
        return F.when(field_or_null(records, name, "boolean"), F.lit(False))

    who, at = F.lit(id_type), field_or_null(records, "SystemModstamp")
    return _explode(
        records,
        [
            _statement(who, F.col("Id"), "email", opted_out("HasOptedOutOfEmail"), at, "salesforce"),
            _statement(who, F.col("Id"), "sms", opted_out("DoNotCall"), at, "salesforce"),
        ],
    )


def event_statements(events: DataFrame) -> DataFrame:
    """Unsubscribes in the ``events`` table, stated by the event's customer identifier and by its email."""
    from pyspark.sql import functions as F

    kind = F.lower(F.col("type"))
    unsubscribe = kind.rlike(UNSUBSCRIBE_PATTERN)
    channel = F.when(kind.contains("sms"), "sms").when(kind.rlike(r"\bads?\b|_ads?\b|ads_"), "ads").otherwise("email")
    refused = F.when(unsubscribe, F.lit(False))
    statements = []
    for target in CHANNELS:
        granted = F.when(channel == target, refused)
        statements.append(
            _statement(
                F.col("customer_id_type"), F.col("customer_id_value"), target, granted, F.col("occurred_at"), "events"
            )
        )
        statements.append(_statement(F.lit("email"), F.col("email"), target, granted, F.col("occurred_at"), "events"))
    return _explode(events, statements)


def latest_consent(statements: DataFrame, key: Sequence[str]) -> DataFrame:
    """One row per ``key`` with, per channel, ``consent_<channel>`` (granted or not, null when no source said) and
    ``consent_<channel>_at``: the most recent statement wins; at the same moment a refusal wins over a grant."""
    from pyspark.sql import functions as F

    aggregates = []
    for channel in CHANNELS:
        mine = F.col("channel") == channel
        # The largest wins: the latest statement, then a refusal (~granted is true), then the source, so ties are
        # decided the same way on every run.
        order = F.when(mine, F.struct(F.col("stated_at"), ~F.col("granted"), F.col("source")))
        winner = F.max_by(F.when(mine, F.struct(F.col("granted"), F.col("stated_at"))), order)
        aggregates.append(winner.alias(f"_w_{channel}"))
    grouped = statements.where(F.col("stated_at").isNotNull()).groupBy(*key).agg(*aggregates)
    columns = [F.col(name) for name in key]
    for channel in CHANNELS:
        columns.append(F.col(f"_w_{channel}.granted").alias(f"consent_{channel}"))
        columns.append(F.col(f"_w_{channel}.stated_at").alias(f"consent_{channel}_at"))
    return grouped.select(*columns)
