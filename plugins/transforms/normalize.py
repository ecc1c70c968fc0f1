"""Normalisation of the values identity and the serving stores match on: emails, phones, countries, names, times.

Each function returns a Spark Column (or, for countries, a DataFrame joined with a lookup table) and never runs a
Python row UDF: Spark's built-in functions where they suffice, Arrow-batched pandas UDFs where only a Python library
can decide (``email-validator`` for email syntax, ``phonenumbers`` for E.164, ``unicodedata`` for NFC).

A normalised value is a struct ``<value, reason>``: ``value`` is the normal form, or null when the input is invalid,
and ``reason`` says why it was rejected (null when valid or when the input was null). :func:`with_normalized` puts
the two into a column and its ``_cdp_reason_<column>`` companion, which the quality report counts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING

# Imported at module level: pyspark reads the Arrow UDFs' type hints (pd.Series -> pd.DataFrame) to know their kind.
# Only transforms import this module, never the CLI's start-up.
import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

REASON_PREFIX = "_cdp_reason_"
NORMALIZED_TYPE = "struct<value: string, reason: string>"
INVALID_EMAIL = "invalid email"
INVALID_PHONE = "invalid phone number"
UNKNOWN_COUNTRY = "unknown country"
INVALID_TIMESTAMP = "invalid timestamp"


def reason_column(column: str) -> str:
    """The companion column holding why ``column``'s value was rejected by normalisation."""
    return f"{REASON_PREFIX}{column}"


def with_normalized(df: DataFrame, column: str, normalized: Column) -> DataFrame:
    """``df`` with ``column`` set to ``normalized``'s value and ``_cdp_reason_<column>`` to its reason."""
    return df.withColumn(reason_column(column), normalized["reason"]).withColumn(column, normalized["value"])


def _blank_to_null(column: Column) -> Column:
    from pyspark.sql import functions as F

    trimmed = F.trim(column.cast("string"))
    return F.when(trimmed != "", trimmed)


# -- emails -------------------------------------------------------------------------------------------------------


def _email_batches(values: pd.Series) -> pd.DataFrame:
    """Arrow batch: each trimmed, lower-cased address checked for syntax by email-validator (no DNS)."""
    from email_validator import EmailNotValidError, validate_email

    seen: dict[str, tuple[str | None, str | None]] = {}
    out_values: list[str | None] = []
    out_reasons: list[str | None] = []
    for text in values:
        if text is None or (isinstance(text, float) and pd.isna(text)):
            out_values.append(None)
            out_reasons.append(None)
            continue
        if text not in seen:
            try:
                checked = validate_email(text, check_deliverability=False, allow_smtputf8=True)
                seen[text] = (checked.normalized.lower(), None)
            except EmailNotValidError as exc:
                seen[text] = (None, f"{INVALID_EMAIL}: {exc}")
        value, reason = seen[text]
        out_values.append(value)
        out_reasons.append(reason)
    return pd.DataFrame({"value": out_values, "reason": out_reasons})


def email(column: Column | str) -> Column:
    """An email address trimmed, lower-cased and syntax-checked (RFC 5322/6531 via email-validator, no DNS)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    check = pandas_udf(_email_batches, NORMALIZED_TYPE)  # type: ignore[call-overload]
    checked: Column = check(F.lower(_blank_to_null(F.col(column) if isinstance(column, str) else column)))
    return checked


# -- phones -------------------------------------------------------------------------------------------------------


def _phone_batches(values: pd.Series, regions: pd.Series) -> pd.DataFrame:
    """Arrow batch: each number parsed with its row's default region and formatted E.164 when valid."""
    import phonenumbers

    seen: dict[tuple[str, str | None], tuple[str | None, str | None]] = {}
    out_values: list[str | None] = []
    out_reasons: list[str | None] = []
    for text, region in zip(values, regions, strict=True):
        if text is None or (isinstance(text, float) and pd.isna(text)):
            out_values.append(None)
            out_reasons.append(None)
            continue
        region_code = region if isinstance(region, str) and region else None
        if (text, region_code) not in seen:
            try:
                number = phonenumbers.parse(text, region_code)
            except phonenumbers.NumberParseException as exc:
                seen[(text, region_code)] = (None, f"{INVALID_PHONE}: {exc}")
            else:
                if phonenumbers.is_valid_number(number):
                    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                    seen[(text, region_code)] = (e164, None)
                else:
                    seen[(text, region_code)] = (None, f"{INVALID_PHONE}: not a valid number for its region")
        value, reason = seen[(text, region_code)]
        out_values.append(value)
        out_reasons.append(reason)
    return pd.DataFrame({"value": out_values, "reason": out_reasons})


def phone(column: Column | str, default_region: Column | str | None) -> Column:
    """A phone number in E.164 (``+33612345678``), parsed by phonenumbers.

    ``default_region`` (an ISO 3166 alpha-2 code, or a column of them, e.g. the row's country falling back to the
    tenant's) is the region of numbers written without a ``+`` country code; numbers with one ignore it.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    region = default_region if not isinstance(default_region, str | None) else F.lit(default_region)
    check = pandas_udf(_phone_batches, NORMALIZED_TYPE)  # type: ignore[call-overload]
    checked: Column = check(_blank_to_null(F.col(column) if isinstance(column, str) else column), F.upper(region))
    return checked


# -- countries ----------------------------------------------------------------------------------------------------


@cache
def country_lookup_rows() -> tuple[tuple[str, str], ...]:
    """``(key, alpha_2)`` for every ISO 3166 country: alpha-2, alpha-3, numeric, name, official and common names.

    Keys are upper-cased; a code wins over a name that happens to spell the same.
    """
    import pycountry

    keys: dict[str, str] = {}
    for country in pycountry.countries:
        for attribute in ("name", "official_name", "common_name"):
            name = getattr(country, attribute, None)
            if name:
                keys.setdefault(name.upper(), country.alpha_2)
                ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
                keys.setdefault(ascii_name.upper(), country.alpha_2)
    for country in pycountry.countries:
        keys[country.alpha_3] = country.alpha_2
        keys[country.numeric] = country.alpha_2
    for country in pycountry.countries:
        keys[country.alpha_2] = country.alpha_2
    # Names people and providers write that ISO does not list (the UK's code is GB; UK is reserved for it).
    for alias, code in {"UK": "GB", "GREAT BRITAIN": "GB", "USA": "US", "UNITED STATES OF AMERICA": "US"}.items():
        keys.setdefault(alias, code)
    return tuple(sorted(keys.items()))


_LOOKUP_KEY = "_cdp_country_key"
_LOOKUP_CODE = "_cdp_country_alpha_2"


def country_lookup(spark: SparkSession) -> DataFrame:
    """The country lookup table (``_cdp_country_key`` -> ``_cdp_country_alpha_2``), built once per process."""
    return spark.createDataFrame(list(country_lookup_rows()), f"{_LOOKUP_KEY} string, {_LOOKUP_CODE} string")


def with_country(df: DataFrame, column: str, output: str | None = None) -> DataFrame:
    """``df`` with ``output`` (default: ``column`` itself) as the ISO 3166 alpha-2 code of ``column``.

    Accepts alpha-2, alpha-3 and numeric codes and English names in any case (``fr``, ``FRA``, ``250``,
    ``France``, ``Côte d'Ivoire``); anything else is null with ``_cdp_reason_<output>`` = ``unknown country``.
    The lookup table is broadcast to every task: a join, not a UDF.
    """
    from pyspark.sql import functions as F

    target = output or column
    lookup = F.broadcast(country_lookup(df.sparkSession))
    key = F.upper(_blank_to_null(F.col(column)))
    joined = df.withColumn(_LOOKUP_KEY, key).join(lookup, _LOOKUP_KEY, "left")
    reason = F.when(F.col(_LOOKUP_KEY).isNotNull() & F.col(_LOOKUP_CODE).isNull(), F.lit(UNKNOWN_COUNTRY))
    joined = joined.withColumn(reason_column(target), reason).withColumn(target, F.col(_LOOKUP_CODE))
    return joined.drop(_LOOKUP_KEY, _LOOKUP_CODE)


# -- names --------------------------------------------------------------------------------------------------------


def _nfc_batches(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
    for values in batches:
        yield values.str.normalize("NFC").str.strip()


def person_name(column: Column | str) -> Column:
    """A name in Unicode NFC (composed: ``e`` + combining acute becomes ``é``), trimmed; blank is null."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    compose = pandas_udf(_nfc_batches, "string")  # type: ignore[call-overload]
    value = compose(F.col(column) if isinstance(column, str) else column)
    return F.when(value != "", value)


# -- timestamps ---------------------------------------------------------------------------------------------------


def timestamp_utc(column: Column | str) -> Column:
    """A moment as a UTC timestamp: epoch seconds (a number or digits, fractions kept), an ISO 8601 string with
    its offset (``2026-01-02T03:04:05+02:00``, ``...Z``; without an offset it is taken as UTC), or a timestamp.

    Returns the struct ``<value: timestamp, reason: string>``.
    """
    from pyspark.sql import functions as F

    text = _blank_to_null(F.col(column) if isinstance(column, str) else column)
    epoch = text.rlike(r"^-?[0-9]+(\.[0-9]+)?$")
    value = F.when(epoch, F.timestamp_seconds(text.cast("decimal(20, 6)"))).otherwise(F.try_to_timestamp(text))
    reason = F.when(text.isNotNull() & value.isNull(), F.lit(INVALID_TIMESTAMP))
    return F.struct(value.alias("value"), reason.alias("reason"))
