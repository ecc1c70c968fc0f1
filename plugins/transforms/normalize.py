"""Normalisation of the values identity and the serving stores match on: emails, phones, countries, names, times.

Each function returns a Spark Column (or, for countries, a DataFrame joined with a lookup table) and never runs a
Python row UDF: Spark's built-in functions where they suffice, Arrow-batched pandas UDFs where only a Python library
can decide (``email-validator`` for email syntax, ``phonenumbers`` for E.164, ``unicodedata`` for NFC).

A normalised value is a struct ``<value, reason>``: ``value`` is the normal form, or null when the input is invalid,
and ``reason`` says why it was rejected (null when valid or when the input was null). :func:`with_normalized` puts
the two into a column and its ``_cdp_reason_<column>`` companion, which the quality report counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
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


# email-validator spends about 50 microseconds on an address, most of it checking the domain character by character
# (UTS-46): at a million records that was the largest cost of customer_records (benchmarks/transform_customers.py). So
# a plain ASCII address is checked in two parts: its local part by the dot-atom rule email-validator applies to such a
# part (RFC 5322 atext, without its upper case, as addresses arrive here lower-cased), its domain by email-validator
# itself, once per domain per worker (the same few domains come back in every batch). Anything else (quotes, non-ASCII,
# a domain it rejects or writes otherwise, such as punycode, an address over the length limit) goes to email-validator
# whole, which also words the reason.
# tests/test_transforms_normalize.py checks on generated addresses that both ways give the same answer.
_PLAIN_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL_PART = re.compile(rf"{_PLAIN_ATOM}(?:\.{_PLAIN_ATOM})*\Z")
_PLAIN_LENGTH_LIMIT = 254  # email-validator's limit on a whole address (RFC 5321 4.5.3.1.3)


@lru_cache(maxsize=65_536)
def _checked_email(text: str) -> tuple[str | None, str | None]:
    """``(value, reason)`` of one trimmed, lower-cased address: email-validator's normal form, or why it is not one.
    Cached per worker process: the same addresses come back in every batch (versions, shared inboxes)."""
    local_part, at, domain = text.rpartition("@")
    plain = at and text.isascii() and len(text) <= _PLAIN_LENGTH_LIMIT and _PLAIN_LOCAL_PART.match(local_part)
    # Only a domain that is its own normal form: a punycode one becomes Unicode, longer in UTF-8, and email-validator
    # checks the normal form's length too.
    if plain and _checked_domain(domain) == domain:
        return text, None
    return _validated_email(text)


@lru_cache(maxsize=4_096)
def _checked_domain(domain: str) -> str | None:
    """email-validator's normal form of an address's domain, lower-cased, or None where it rejects the domain."""
    value, _reason = _validated_email(f"x@{domain}")
    return None if value is None else value.partition("@")[2]


def _validated_email(text: str) -> tuple[str | None, str | None]:
    """``(value, reason)`` of one address by email-validator alone (no DNS)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        return None, f"{INVALID_EMAIL}: {exc}"
    return checked.normalized.lower(), None


def _emails(values: Iterable[object]) -> tuple[list[str | None], list[str | None]]:
    """Values and reasons of a batch of trimmed, lower-cased addresses (null stays null, with no reason)."""
    out_values: list[str | None] = []
    out_reasons: list[str | None] = []
    for text in values:
        value, reason = _checked_email(text) if isinstance(text, str) else (None, None)
        out_values.append(value)
        out_reasons.append(reason)
    return out_values, out_reasons


def _email_batches(values: pd.Series) -> pd.DataFrame:
    """Arrow batch: each trimmed, lower-cased address checked for syntax by email-validator (no DNS)."""
    out_values, out_reasons = _emails(values)
    return pd.DataFrame({"value": out_values, "reason": out_reasons})


def email(column: Column | str) -> Column:
    """An email address trimmed, lower-cased and syntax-checked (RFC 5322/6531 via email-validator, no DNS)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    check = pandas_udf(_email_batches, NORMALIZED_TYPE)  # type: ignore[call-overload]
    checked: Column = check(F.lower(_blank_to_null(F.col(column) if isinstance(column, str) else column)))
    return checked


# -- phones -------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=65_536)
def _checked_phone(text: str, region_code: str | None) -> tuple[str | None, str | None]:
    """``(value, reason)`` of one number read with ``region_code``: E.164 when valid, else why not. Cached per worker
    process, like :func:`_checked_email`."""
    import phonenumbers

    try:
        number = phonenumbers.parse(text, region_code)
    except phonenumbers.NumberParseException as exc:
        return None, f"{INVALID_PHONE}: {exc}"
    if not phonenumbers.is_valid_number(number):
        return None, f"{INVALID_PHONE}: not a valid number for its region"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def _phones(values: Iterable[object], regions: Iterable[object]) -> tuple[list[str | None], list[str | None]]:
    """Values and reasons of a batch of numbers, each read with its row's region (null stays null, no reason)."""
    out_values: list[str | None] = []
    out_reasons: list[str | None] = []
    for text, region in zip(values, regions, strict=True):
        region_code = region if isinstance(region, str) and region else None
        value, reason = _checked_phone(text, region_code) if isinstance(text, str) else (None, None)
        out_values.append(value)
        out_reasons.append(reason)
    return out_values, out_reasons


def _phone_batches(values: pd.Series, regions: pd.Series) -> pd.DataFrame:
    """Arrow batch: each number parsed with its row's default region and formatted E.164 when valid."""
    out_values, out_reasons = _phones(values, regions)
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


def _names(values: Iterable[object]) -> list[str | None]:
    """A batch of names in NFC, trimmed; blank is null."""
    return [(unicodedata.normalize("NFC", text).strip() or None) if isinstance(text, str) else None for text in values]


def _nfc_batches(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
    for values in batches:
        yield pd.Series(_names(values), index=values.index, dtype=object)


def person_name(column: Column | str) -> Column:
    """A name in Unicode NFC (composed: ``e`` + combining acute becomes ``é``), trimmed; blank is null."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf

    compose = pandas_udf(_nfc_batches, "string")  # type: ignore[call-overload]
    value = compose(F.col(column) if isinstance(column, str) else column)
    return F.when(value != "", value)


# -- several fields in one pass ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One column for :func:`with_normalized_fields`: ``kind`` is ``email``, ``phone`` or ``name``, normalised as
    :func:`email`, :func:`phone` (``region``: an alpha-2 code or a column of them) and :func:`person_name` do."""

    kind: str
    column: Column | str
    region: Column | str | None = None

    @classmethod
    def email(cls, column: Column | str) -> FieldSpec:
        return cls("email", column)

    @classmethod
    def phone(cls, column: Column | str, region: Column | str | None) -> FieldSpec:
        return cls("phone", column, region)

    @classmethod
    def name(cls, column: Column | str) -> FieldSpec:
        return cls("name", column)


_KINDS_WITH_REASONS = ("email", "phone")


def with_normalized_fields(df: DataFrame, fields: Mapping[str, FieldSpec]) -> DataFrame:
    """``df`` with each output column of ``fields`` set to its normalised value, all in ONE Arrow-batched pass.

    The same values and reasons as :func:`email`, :func:`phone` and :func:`person_name` with
    :func:`with_normalized`, but a row crosses to Python once for all its fields instead of once per field (each
    pandas UDF is its own Arrow round trip). Emails and phones also get their ``_cdp_reason_<column>``. Spark's
    built-ins still do what they can first (trimming, lower-casing emails, upper-casing regions). An Arrow UDF, not a
    pandas one: the batch's columns become Python strings once, without pandas in between (at 1,000,000 customer
    records, 10.7-11.1 s against 11.3-11.8 s for the pass).
    """
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import arrow_udf
    from pyspark.sql.types import StringType, StructField, StructType

    if unknown := sorted({spec.kind for spec in fields.values()} - {"email", "phone", "name"}):
        raise ValueError(f"unknown normalisation kind(s) {', '.join(unknown)}; use email, phone or name")
    if not fields:
        return df
    kinds = tuple(spec.kind for spec in fields.values())
    inputs = []
    outputs = []
    for index, spec in enumerate(fields.values()):
        column = F.col(spec.column) if isinstance(spec.column, str) else spec.column
        if spec.kind == "email":
            inputs.append(F.lower(_blank_to_null(column)).alias(f"v{index}"))
        elif spec.kind == "phone":
            region = spec.region if not isinstance(spec.region, str | None) else F.lit(spec.region)
            inputs.append(_blank_to_null(column).alias(f"v{index}"))
            inputs.append(F.upper(region).cast("string").alias(f"r{index}"))
        else:
            inputs.append(column.cast("string").alias(f"v{index}"))
        outputs.append(f"v{index}")
        if spec.kind in _KINDS_WITH_REASONS:
            outputs.append(f"e{index}")
    result_type = StructType([StructField(name, StringType()) for name in outputs])

    def normalise(batch: pa.Array) -> pa.Array:
        # Arrow in and out, no pandas: each column is read once as Python strings and written back as Arrow.
        import pyarrow as pa

        def column(name: str) -> list[object]:
            return batch.field(name).to_pylist()  # type: ignore[no-any-return]

        out: dict[str, list[str | None]] = {}
        for position, kind in enumerate(kinds):
            values = column(f"v{position}")
            if kind == "email":
                out[f"v{position}"], out[f"e{position}"] = _emails(values)
            elif kind == "phone":
                out[f"v{position}"], out[f"e{position}"] = _phones(values, column(f"r{position}"))
            else:
                out[f"v{position}"] = _names(values)
        return pa.StructArray.from_arrays([pa.array(out[name], pa.string()) for name in outputs], names=outputs)

    # This module postpones annotations (strings); Spark reads the UDF's kind from real ones.
    normalise.__annotations__ = {"batch": pa.Array, "return": pa.Array}
    normalised = arrow_udf(normalise, result_type)(F.struct(*inputs))  # type: ignore[call-overload]
    carrier = "_cdp_normalised"
    df = df.withColumn(carrier, normalised)
    columns: dict[str, Column] = {}
    for index, (name, spec) in enumerate(fields.items()):
        columns[name] = F.col(f"{carrier}.v{index}")
        if spec.kind in _KINDS_WITH_REASONS:
            columns[reason_column(name)] = F.col(f"{carrier}.e{index}")
    return df.withColumns(columns).drop(carrier)


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
