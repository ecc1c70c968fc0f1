"""The ``orders`` table: Shopify orders, Stripe charges, invoices and payment intents, Salesforce opportunities.

One row per source object, keyed ``order_id`` = ``provider:object:id``. Money is a decimal in the currency's major
unit with its ISO code. ``is_revenue`` marks the rows that count as revenue once: Stripe invoices and payment
intents are kept for reference but the money they describe arrives as charges, so only charges count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.transforms.frames import field_or_null, latest_per_key, union_all
from plugins.transforms.money import currency_code, major_amount, stripe_minor_to_major
from plugins.transforms.normalize import email, reason_column, timestamp_utc
from plugins.transforms.quality import Allowed, Format, QualityRule, Range, Required
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Shopify financial statuses of an order whose money was taken (REFUNDED and VOIDED are not revenue).
SHOPIFY_REVENUE_STATUSES = ("PAID", "PARTIALLY_PAID", "PARTIALLY_REFUNDED")
OUTPUT_COLUMNS = (
    "order_id",
    "provider",
    "source_object",
    "source_id",
    "customer_id_type",
    "customer_id_value",
    "email",
    "status",
    "amount",
    "refunded_amount",
    "currency",
    "is_revenue",
    "ordered_at",
    "updated_at",
)
# Rows breaking one go to the DLQ as transform_rejected (docs/transforms.md, "Quality rules").
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("order_id"),
    Required("ordered_at"),
    Allowed("source_object", ("order", "charge", "invoice", "payment_intent", "opportunity")),
    Format("currency", "^[A-Z]{3}$"),
    Range("amount", minimum=0),
    Range("refunded_amount", minimum=0),
)


def _rows(
    df: DataFrame,
    *,
    provider: str,
    source_object: str,
    customer_id_type: Column,
    customer_id_value: Column,
    email_address: Column,
    status: Column,
    amount: Column,
    refunded_amount: Column,
    currency: Column,
    is_revenue: Column,
    ordered_at: Column,
    updated_at: Column,
    id_column: str = "id",
) -> DataFrame:
    from pyspark.sql import functions as F

    normalized_email = email(email_address)
    return df.select(
        F.concat_ws(":", F.lit(provider), F.lit(source_object), F.col(id_column)).alias("order_id"),
        F.lit(provider).alias("provider"),
        F.lit(source_object).alias("source_object"),
        F.col(id_column).cast("string").alias("source_id"),
        F.when(customer_id_value.isNotNull(), customer_id_type)
        .otherwise(F.when(normalized_email["value"].isNotNull(), F.lit("email")))
        .alias("customer_id_type"),
        F.coalesce(customer_id_value.cast("string"), normalized_email["value"]).alias("customer_id_value"),
        normalized_email["value"].alias("email"),
        status.cast("string").alias("status"),
        amount.alias("amount"),
        refunded_amount.alias("refunded_amount"),
        currency_code(currency).alias("currency"),
        F.coalesce(is_revenue, F.lit(False)).alias("is_revenue"),
        ordered_at.alias("ordered_at"),
        F.coalesce(updated_at, ordered_at).alias("updated_at"),
        normalized_email["reason"].alias(reason_column("email")),
        field_or_null(df, SOURCE_FILE_COLUMN).alias(SOURCE_FILE_COLUMN),
    )


def _stripe(df: DataFrame, source_object: str, amount: str, refunded: str | None, revenue: Column) -> DataFrame:
    from pyspark.sql import functions as F

    currency = field_or_null(df, "currency")
    email_address = F.coalesce(
        field_or_null(df, "receipt_email"),
        field_or_null(df, "customer_email"),
        field_or_null(df, "billing_details.email"),
    )
    refunded_amount = stripe_minor_to_major(field_or_null(df, refunded, "long"), currency) if refunded else F.lit(None)
    return _rows(
        df,
        provider="stripe",
        source_object=source_object,
        customer_id_type=F.lit("stripe_customer"),
        customer_id_value=field_or_null(df, "customer"),
        email_address=email_address,
        status=field_or_null(df, "status"),
        amount=stripe_minor_to_major(field_or_null(df, amount, "long"), currency),
        refunded_amount=refunded_amount.cast("decimal(38, 9)"),
        currency=currency,
        is_revenue=revenue,
        ordered_at=timestamp_utc(field_or_null(df, "created", "long"))["value"],
        updated_at=field_or_null(df, "_sdc_extracted_at", "timestamp"),
    )


def orders(
    *,
    shopify_orders: DataFrame | None = None,
    stripe_charges: DataFrame | None = None,
    stripe_invoices: DataFrame | None = None,
    stripe_payment_intents: DataFrame | None = None,
    salesforce_opportunity: DataFrame | None = None,
) -> DataFrame:
    """The orders of every source given, the latest version of each (by ``updated_at``, then raw file)."""
    from pyspark.sql import functions as F

    frames: list[DataFrame | None] = []
    if shopify_orders is not None:
        df = shopify_orders
        money = "totalPriceSet.shopMoney"
        financial = F.upper(field_or_null(df, "displayFinancialStatus"))
        revenue = (
            financial.isin(*SHOPIFY_REVENUE_STATUSES)
            & field_or_null(df, "cancelledAt", "timestamp").isNull()
            & ~F.coalesce(field_or_null(df, "test", "boolean"), F.lit(False))
        )
        frames.append(
            _rows(
                df,
                provider="shopify",
                source_object="order",
                customer_id_type=F.lit("shopify_customer"),
                customer_id_value=field_or_null(df, "customer.id"),
                email_address=field_or_null(df, "email"),
                status=financial,
                amount=major_amount(field_or_null(df, f"{money}.amount")),
                refunded_amount=F.lit(None).cast("decimal(38, 9)"),
                currency=field_or_null(df, f"{money}.currencyCode"),
                is_revenue=revenue,
                ordered_at=F.coalesce(
                    field_or_null(df, "processedAt", "timestamp"), field_or_null(df, "createdAt", "timestamp")
                ),
                updated_at=field_or_null(df, "updatedAt", "timestamp"),
            )
        )
    if stripe_charges is not None:
        succeeded = F.col("status") == "succeeded"
        frames.append(_stripe(stripe_charges, "charge", "amount_captured", "amount_refunded", succeeded))
    if stripe_invoices is not None:
        frames.append(_stripe(stripe_invoices, "invoice", "amount_paid", None, F.lit(False)))
    if stripe_payment_intents is not None:
        frames.append(_stripe(stripe_payment_intents, "payment_intent", "amount_received", None, F.lit(False)))
    if salesforce_opportunity is not None:
        df = salesforce_opportunity
        frames.append(
            _rows(
                df,
                provider="salesforce",
                source_object="opportunity",
                customer_id_type=F.lit("salesforce_account"),
                customer_id_value=field_or_null(df, "AccountId"),
                email_address=F.lit(None).cast("string"),
                status=field_or_null(df, "StageName"),
                amount=major_amount(field_or_null(df, "Amount")),
                refunded_amount=F.lit(None).cast("decimal(38, 9)"),
                currency=field_or_null(df, "CurrencyIsoCode"),
                is_revenue=F.coalesce(field_or_null(df, "IsWon", "boolean"), F.lit(False)),
                ordered_at=field_or_null(df, "CloseDate", "date").cast("timestamp"),
                updated_at=field_or_null(df, "SystemModstamp", "timestamp"),
                id_column="Id",
            )
        )
    everything = union_all(frames, "orders")
    return latest_per_key(
        everything, ["order_id"], [F.col("updated_at").desc_nulls_last(), F.col(SOURCE_FILE_COLUMN).desc_nulls_last()]
    )
