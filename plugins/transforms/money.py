"""Money as a decimal in the currency's major unit with its ISO 4217 code.

Stripe sends amounts in the currency's smallest unit: cents for USD, but yen for JPY (a zero-decimal currency) and
thousandths for the three-decimal ones; this module divides by the right power of ten, as Stripe documents
(https://docs.stripe.com/currencies). Shopify and Salesforce already send major units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

MONEY_TYPE = "decimal(38, 9)"
# Stripe's zero-decimal and three-decimal currencies; every other one has two decimals in Stripe's API (ISK, HUF and
# TWD included: Stripe represents them as two-decimal for backwards compatibility).
STRIPE_ZERO_DECIMAL = (
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
)  # fmt: skip
STRIPE_THREE_DECIMAL = ("BHD", "JOD", "KWD", "OMR", "TND")


def currency_code(column: Column) -> Column:
    """An ISO 4217 code upper-cased (Stripe writes ``usd``); blank is null."""
    from pyspark.sql import functions as F

    code = F.upper(F.trim(column))
    return F.when(code.rlike("^[A-Z]{3}$"), code)


def stripe_minor_to_major(amount: Column, currency: Column) -> Column:
    """A Stripe amount in the currency's smallest unit as a decimal in its major unit (1999 usd -> 19.99)."""
    from pyspark.sql import functions as F

    code = currency_code(currency)
    exponent = F.when(code.isin(*STRIPE_ZERO_DECIMAL), 0).when(code.isin(*STRIPE_THREE_DECIMAL), 3).otherwise(2)
    return (amount.cast(MONEY_TYPE) / F.pow(F.lit(10), exponent).cast(MONEY_TYPE)).cast(MONEY_TYPE)


def major_amount(amount: Column) -> Column:
    """An amount already in major units (Shopify's decimal strings, Salesforce's currency fields) as a decimal."""
    return amount.cast(MONEY_TYPE)
