"""The ``customer_records`` table: one row per source person-record, normalised, the input of identity resolution.

Stripe customers, Shopify customers, Salesforce Contacts and Leads, each the latest version of its record, keyed
``record_id`` = ``provider:object:id``. Emails are checked by email-validator, phones put in E.164 (read in the
record's own country, else the tenant's ``default_region``), countries in ISO 3166 alpha-2, names in Unicode NFC,
times in UTC. What each record says about consent is carried per channel (``consent.py``); its custom fields
(Stripe ``metadata``, Shopify metafields, Salesforce ``*__c`` fields) as JSON text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from plugins.transforms.consent import CHANNELS, latest_consent, salesforce_statements, shopify_statements
from plugins.transforms.frames import field_or_null, latest_per_key, union_all
from plugins.transforms.normalize import FieldSpec, timestamp_utc, with_country, with_normalized_fields
from plugins.transforms.person_columns import (
    ADDRESS_COLUMNS,
    CONSENT_COLUMNS,
    CONSENT_STATES,
    NAME_COLUMNS,
    PROVIDER_ID_TYPES,
)
from plugins.transforms.quality import Allowed, Format, QualityRule, Required
from plugins.transforms.raw_schema import SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from plugins.transforms.run import TransformRun

OUTPUT_COLUMNS = (
    "record_id",
    "source",
    "provider",
    "provider_id_type",
    "provider_id",
    "email",
    "phone",
    *NAME_COLUMNS,
    *ADDRESS_COLUMNS,
    *CONSENT_COLUMNS,
    "custom_fields",
    "created_at",
    "updated_at",
)
# Rows breaking one go to the DLQ as transform_rejected (docs/transforms.md, "Quality rules").
QUALITY_RULES: tuple[QualityRule, ...] = (
    Required("record_id"),
    Required("provider_id"),
    Required("updated_at"),
    Allowed("provider_id_type", PROVIDER_ID_TYPES),
    Format("phone", r"^\+[1-9][0-9]{1,14}$"),
    Format("country", "^[A-Z]{2}$"),
    *(Allowed(f"consent_{channel}", CONSENT_STATES) for channel in CHANNELS),
)


def _rows(
    df: DataFrame,
    *,
    provider: str,
    stream: str,
    source_object: str,
    provider_id: Column,
    email_address: Column,
    phone_number: Column,
    first_name: Column,
    last_name: Column,
    full_name: Column,
    address: tuple[Column, Column, Column, Column, Column, Column],
    custom_fields: Column,
    created_at: Column,
    updated_at: Column,
) -> DataFrame:
    """One source's records in the table's columns, as the source wrote them (normalised by :func:`_normalised`)."""
    from pyspark.sql import functions as F

    line1, line2, city, region, postal_code, country = address
    return df.select(
        F.concat_ws(":", F.lit(provider), F.lit(source_object), provider_id).alias("record_id"),
        F.lit(f"{provider}/{stream}").alias("source"),
        F.lit(provider).alias("provider"),
        F.lit(f"{provider}_{source_object}").alias("provider_id_type"),
        provider_id.cast("string").alias("provider_id"),
        email_address.cast("string").alias("email"),
        phone_number.cast("string").alias("phone"),
        first_name.cast("string").alias("first_name"),
        last_name.cast("string").alias("last_name"),
        full_name.cast("string").alias("full_name"),
        line1.cast("string").alias("address_line1"),
        line2.cast("string").alias("address_line2"),
        city.cast("string").alias("city"),
        region.cast("string").alias("region"),
        F.trim(postal_code.cast("string")).alias("postal_code"),
        country.cast("string").alias("country"),
        custom_fields.cast("string").alias("custom_fields"),
        created_at.alias("created_at"),
        F.coalesce(updated_at, created_at).alias("updated_at"),
        field_or_null(df, SOURCE_FILE_COLUMN).alias(SOURCE_FILE_COLUMN),
    )


def _normalised(rows: DataFrame, default_region: str | None) -> DataFrame:
    """Every Python-only field of a row (email, phone, names, address parts) in one Arrow-batched pass: one round
    trip to Python per row instead of one per field. Countries went through the broadcast lookup before, so that
    phones are read in the record's own country, else the tenant's ``default_region``."""
    from pyspark.sql import functions as F

    region = F.coalesce(F.col("country"), F.lit(default_region).cast("string"))
    names = ("first_name", "last_name", "full_name", "address_line1", "address_line2", "city", "region")
    fields = {
        "email": FieldSpec.email("email"),
        "phone": FieldSpec.phone("phone", region),
        **{name: FieldSpec.name(name) for name in names},
    }
    normalised = with_normalized_fields(rows, fields)
    joined = F.concat_ws(" ", "first_name", "last_name")
    return normalised.withColumn("full_name", F.coalesce(F.col("full_name"), F.when(joined != "", joined)))


def _latest(df: DataFrame, key: str, updated: Column) -> DataFrame:
    """The latest raw version of each record: a record's consent is what its latest version says."""
    from pyspark.sql import functions as F

    return latest_per_key(
        df.withColumn("_cdp_updated", updated),
        [key],
        [F.col("_cdp_updated").desc_nulls_last(), F.col(SOURCE_FILE_COLUMN).desc_nulls_last()],
    ).drop("_cdp_updated")


def _with_consent(rows: DataFrame, statements: DataFrame | None) -> DataFrame:
    """``rows`` with ``consent_<channel>`` (``granted``, ``denied``, null: the record says nothing) and its time."""
    from pyspark.sql import functions as F

    if statements is None:
        columns = []
        for channel in CHANNELS:
            columns.append(F.lit(None).cast("string").alias(f"consent_{channel}"))
            columns.append(F.lit(None).cast("timestamp").alias(f"consent_{channel}_at"))
        return rows.select("*", *columns)
    latest = latest_consent(statements, ["id_type", "id_value"])
    states = [F.col("id_type").alias("_cdp_type"), F.col("id_value").alias("_cdp_value")]
    for channel in CHANNELS:
        granted = F.col(f"consent_{channel}")
        states.append(F.when(granted, "granted").when(~granted, "denied").alias(f"consent_{channel}"))
        states.append(F.col(f"consent_{channel}_at"))
    joined = rows.join(
        latest.select(*states),
        (F.col("provider_id_type") == F.col("_cdp_type")) & (F.col("provider_id") == F.col("_cdp_value")),
        "left",
    )
    return joined.drop("_cdp_type", "_cdp_value")


def _json_of_custom_fields(df: DataFrame) -> Column:
    """Salesforce custom fields (``*__c``) as one JSON object; null when the object has none."""
    from pyspark.sql import functions as F

    custom = sorted(name for name in df.columns if name.endswith("__c"))
    return F.to_json(F.struct(*[F.col(f"`{name}`") for name in custom])) if custom else F.lit(None).cast("string")


def _stripe(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    latest = _latest(df, "id", field_or_null(df, "_sdc_extracted_at", "timestamp"))
    metadata = field_or_null(latest, "metadata")
    return _with_consent(
        _rows(
            latest,
            provider="stripe",
            stream="customers",
            source_object="customer",
            provider_id=F.col("id"),
            email_address=field_or_null(latest, "email"),
            phone_number=field_or_null(latest, "phone"),
            first_name=F.lit(None).cast("string"),
            last_name=F.lit(None).cast("string"),
            full_name=field_or_null(latest, "name"),
            address=(
                field_or_null(latest, "address.line1"),
                field_or_null(latest, "address.line2"),
                field_or_null(latest, "address.city"),
                field_or_null(latest, "address.state"),
                field_or_null(latest, "address.postal_code"),
                field_or_null(latest, "address.country"),
            ),
            custom_fields=F.when(~F.trim(metadata).isin("{}", ""), metadata),
            created_at=timestamp_utc(field_or_null(latest, "created", "long"))["value"],
            updated_at=field_or_null(latest, "_sdc_extracted_at", "timestamp"),
        ),
        None,  # Stripe customers say nothing about marketing consent.
    )


def _shopify(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    latest = _latest(df, "id", field_or_null(df, "updatedAt", "timestamp"))
    metafields = field_or_null(latest, "metafields")

    def address(part: str) -> Column:
        return field_or_null(latest, f"defaultAddress.{part}")

    return _with_consent(
        _rows(
            latest,
            provider="shopify",
            stream="customers",
            source_object="customer",
            provider_id=F.col("id"),
            email_address=field_or_null(latest, "defaultEmailAddress.emailAddress"),
            phone_number=F.coalesce(
                field_or_null(latest, "defaultPhoneNumber.phoneNumber"), field_or_null(latest, "defaultAddress.phone")
            ),
            first_name=field_or_null(latest, "firstName"),
            last_name=field_or_null(latest, "lastName"),
            full_name=field_or_null(latest, "displayName"),
            address=(
                address("address1"),
                address("address2"),
                address("city"),
                F.coalesce(
                    field_or_null(latest, "defaultAddress.provinceCode"),
                    field_or_null(latest, "defaultAddress.province"),
                ),
                address("zip"),
                F.coalesce(
                    field_or_null(latest, "defaultAddress.countryCodeV2"),
                    field_or_null(latest, "defaultAddress.country"),
                ),
            ),
            custom_fields=F.when(F.size(metafields) > 0, F.to_json(metafields)),
            created_at=field_or_null(latest, "createdAt", "timestamp"),
            updated_at=field_or_null(latest, "updatedAt", "timestamp"),
        ),
        shopify_statements(latest),
    )


def _salesforce(df: DataFrame, source_object: str, stream: str, address_prefix: str) -> DataFrame:
    from pyspark.sql import functions as F

    latest = _latest(df, "Id", field_or_null(df, "SystemModstamp", "timestamp"))

    def address(part: str) -> Column:
        return field_or_null(latest, f"{address_prefix}{part}")

    return _with_consent(
        _rows(
            latest,
            provider="salesforce",
            stream=stream,
            source_object=source_object,
            provider_id=F.col("Id"),
            email_address=field_or_null(latest, "Email"),
            phone_number=F.coalesce(field_or_null(latest, "Phone"), field_or_null(latest, "MobilePhone")),
            first_name=field_or_null(latest, "FirstName"),
            last_name=field_or_null(latest, "LastName"),
            full_name=field_or_null(latest, "Name"),
            address=(
                address("Street"),
                F.lit(None).cast("string"),  # Salesforce keeps every street line in one field.
                address("City"),
                F.coalesce(address("StateCode"), address("State")),
                address("PostalCode"),
                F.coalesce(address("CountryCode"), address("Country")),
            ),
            custom_fields=_json_of_custom_fields(latest),
            created_at=field_or_null(latest, "CreatedDate", "timestamp"),
            updated_at=field_or_null(latest, "SystemModstamp", "timestamp"),
        ),
        salesforce_statements(latest, f"salesforce_{source_object}"),
    )


def customer_records(
    *,
    stripe_customers: DataFrame | None = None,
    shopify_customers: DataFrame | None = None,
    salesforce_contact: DataFrame | None = None,
    salesforce_lead: DataFrame | None = None,
    run: TransformRun | None = None,
) -> DataFrame:
    """The person-records of every source given, the latest version of each (by ``updated_at``, then raw file).

    Phones without a ``+country`` code are read in the record's country, else ``run.settings.default_region``.
    """

    sources: list[tuple[DataFrame | None, Callable[[DataFrame], DataFrame]]] = [
        (stripe_customers, _stripe),
        (shopify_customers, _shopify),
        (salesforce_contact, lambda df: _salesforce(df, "contact", "Contact", "Mailing")),
        (salesforce_lead, lambda df: _salesforce(df, "lead", "Lead", "")),
    ]
    everything = union_all([build(frame) for frame, build in sources if frame is not None], "customer_records")
    # Each source kept its latest versions (``_latest``), so a record_id is already one row: no fold again here.
    latest = _normalised(with_country(everything, "country"), run.settings.default_region if run is not None else None)
    extra = [name for name in latest.columns if name.startswith("_cdp_")]
    return latest.select(*OUTPUT_COLUMNS, *extra)
