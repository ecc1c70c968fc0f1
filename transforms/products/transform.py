"""The ``products`` table: Shopify products, Stripe products and Stripe prices.

One row per source object, keyed ``product_id`` = ``provider:object:id``. A Stripe price is a row of its own
(``kind`` = ``price``) pointing at its product through ``parent_id``; its unit amount is a decimal in the currency's
major unit. A Shopify product's price is its lowest variant price, in the shop's currency (which the product record
does not name, so ``currency`` is null for it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.transforms.frames import field_or_null, latest_per_key, union_all
from plugins.transforms.money import MONEY_TYPE, currency_code, major_amount, stripe_minor_to_major
from plugins.transforms.normalize import person_name, timestamp_utc
from plugins.transforms.quality import Allowed, Format, QualityRule, Range, Required
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

OUTPUT_COLUMNS = (
    "product_id",
    "provider",
    "kind",
    "source_id",
    "parent_id",
    "name",
    "description",
    "active",
    "unit_price",
    "currency",
    "created_at",
    "updated_at",
)
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("product_id"),
    Allowed("kind", ("product", "price")),
    Format("currency", "^[A-Z]{3}$"),
    Range("unit_price", minimum=0),
)


def _rows(
    df: DataFrame,
    *,
    provider: str,
    kind: str,
    parent_id: Column,
    name: Column,
    description: Column,
    active: Column,
    unit_price: Column,
    currency: Column,
    created_at: Column,
    updated_at: Column,
) -> DataFrame:
    from pyspark.sql import functions as F

    return df.select(
        F.concat_ws(":", F.lit(provider), F.lit(kind), F.col("id")).alias("product_id"),
        F.lit(provider).alias("provider"),
        F.lit(kind).alias("kind"),
        F.col("id").cast("string").alias("source_id"),
        parent_id.cast("string").alias("parent_id"),
        person_name(name).alias("name"),  # Product names get the same Unicode NFC as people's.
        description.cast("string").alias("description"),
        active.cast("boolean").alias("active"),
        unit_price.cast(MONEY_TYPE).alias("unit_price"),
        currency_code(currency).alias("currency"),
        created_at.alias("created_at"),
        F.coalesce(updated_at, created_at).alias("updated_at"),
        field_or_null(df, SOURCE_FILE_COLUMN).alias(SOURCE_FILE_COLUMN),
    )


def products(
    *,
    shopify_products: DataFrame | None = None,
    stripe_products: DataFrame | None = None,
    stripe_prices: DataFrame | None = None,
) -> DataFrame:
    """The products and prices of every source given, the latest version of each."""
    from pyspark.sql import functions as F

    frames: list[DataFrame | None] = []
    if shopify_products is not None:
        df = shopify_products
        prices = F.transform(
            F.coalesce(field_or_null(df, "variants", "array<struct<price: string>>"), F.array()),
            lambda variant: variant["price"].cast(MONEY_TYPE),
        )
        frames.append(
            _rows(
                df,
                provider="shopify",
                kind="product",
                parent_id=F.lit(None),
                name=field_or_null(df, "title"),
                description=field_or_null(df, "description"),
                active=F.upper(field_or_null(df, "status")) == "ACTIVE",
                unit_price=major_amount(F.array_min(prices)),
                currency=F.lit(None).cast("string"),
                created_at=field_or_null(df, "createdAt", "timestamp"),
                updated_at=field_or_null(df, "updatedAt", "timestamp"),
            )
        )
    if stripe_products is not None:
        df = stripe_products
        frames.append(
            _rows(
                df,
                provider="stripe",
                kind="product",
                parent_id=F.lit(None),
                name=field_or_null(df, "name"),
                description=field_or_null(df, "description"),
                active=field_or_null(df, "active", "boolean"),
                unit_price=F.lit(None),
                currency=F.lit(None).cast("string"),
                created_at=timestamp_utc(field_or_null(df, "created", "long"))["value"],
                updated_at=timestamp_utc(field_or_null(df, "updated", "long"))["value"],
            )
        )
    if stripe_prices is not None:
        df = stripe_prices
        currency = field_or_null(df, "currency")
        product = field_or_null(df, "product")
        frames.append(
            _rows(
                df,
                provider="stripe",
                kind="price",
                parent_id=F.when(product.isNotNull(), F.concat(F.lit("stripe:product:"), product)),
                name=F.coalesce(field_or_null(df, "nickname"), field_or_null(df, "lookup_key")),
                description=F.lit(None).cast("string"),
                active=field_or_null(df, "active", "boolean"),
                unit_price=stripe_minor_to_major(field_or_null(df, "unit_amount", "long"), currency),
                currency=currency,
                created_at=timestamp_utc(field_or_null(df, "created", "long"))["value"],
                updated_at=field_or_null(df, "_sdc_extracted_at", "timestamp"),
            )
        )
    everything = union_all(frames, "products")
    return latest_per_key(
        everything,
        ["product_id"],
        [F.col("updated_at").desc_nulls_last(), F.col(SOURCE_FILE_COLUMN).desc_nulls_last()],
    )
