"""The processed zone: Apache Iceberg tables in a pyiceberg SQL catalog, one namespace per tenant (``acme.customers``).

The warehouse is the processed zone's URL (``--processed-url``, ``CDP_PROCESSED_URL``, ``data/processed``), a local
folder or ``s3://bucket/prefix``. The catalog is SQLite by default (``iceberg_catalog.db`` inside a local processed
zone, ``data/iceberg_catalog.db`` beside an S3 one) and PostgreSQL by URL in production (``CDP_CATALOG_URL``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.core.errors import CdpError, ConfigError
from plugins.core.layout import validate_name
from plugins.core.redaction import redact_url
from plugins.core.storage import ObjectStore
from plugins.core.zones import Zone, resolve_zone_url

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyspark.sql.types import StructType

CATALOG_URL_ENV_VAR = "CDP_CATALOG_URL"
#: pyiceberg retries a conflicting commit on top of the new snapshot, keeping the snapshot summary it computed from the
#: old one: the record of processed raw files would lose the other writer's files. A conflict must fail instead.
NO_COMMIT_RETRIES = {"commit.retry.num-retries": "0"}
CATALOG_NAME = "cdp"
SQLITE_FILE = "iceberg_catalog.db"
_TABLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_PARTITION_RE = re.compile(r"^(?P<transform>[a-z]+)\((?:(?P<width>\d+)\s*,\s*)?(?P<column>[A-Za-z_][\w]*)\)$")


class CatalogError(CdpError):
    """The Iceberg catalog could not be opened, or a table asked for does not exist or cannot be created."""


@dataclass(frozen=True)
class ProcessedZone:
    """Where the processed zone's data lives (``warehouse``) and where its catalog is (``catalog_url``)."""

    warehouse: str
    catalog_url: str

    @classmethod
    def resolve(cls, processed_url: str | None = None, catalog_url: str | None = None) -> ProcessedZone:
        """The zone from explicit URLs, else ``CDP_PROCESSED_URL`` / ``CDP_CATALOG_URL``, else the dev defaults."""
        zone_url = resolve_zone_url(Zone.PROCESSED, processed_url)
        store = ObjectStore(zone_url, setting="processed_url")
        warehouse = store.url.rstrip("/") if store.is_s3 else Path(store.local_path("")).as_uri()
        explicit = catalog_url or os.environ.get(CATALOG_URL_ENV_VAR)
        if explicit:
            return cls(warehouse=warehouse, catalog_url=sqlalchemy_url(explicit))
        sqlite_folder = Path("data") if store.is_s3 else store.local_path("")
        return cls(warehouse=warehouse, catalog_url=f"sqlite:///{(sqlite_folder / SQLITE_FILE).absolute()}")

    def open(self) -> SqlCatalog:
        """The pyiceberg catalog (creating the SQLite file and the catalog's own tables on first use)."""
        from pyiceberg.catalog.sql import SqlCatalog

        if self.catalog_url.startswith("sqlite:///"):
            Path(self.catalog_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        properties = {"uri": self.catalog_url, "warehouse": self.warehouse, **_s3_properties()}
        try:
            return SqlCatalog(CATALOG_NAME, **properties)
        except Exception as exc:  # SQLAlchemy raises many kinds; all mean the same thing here.
            raise CatalogError(
                f"cannot open the Iceberg catalog at {redact_url(self.catalog_url)}: {type(exc).__name__}: {exc}; "
                f"check {CATALOG_URL_ENV_VAR}"
            ) from exc


def sqlalchemy_url(url: str) -> str:
    """A catalog URL as SQLAlchemy wants it: ``postgresql://`` runs on psycopg 3, the project's PostgreSQL driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("catalog_url", f"'{url}' is not a URL; use postgresql://user@host/db or sqlite:///path")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith(("postgresql+", "sqlite")):
        return url
    raise ConfigError("catalog_url", f"unsupported catalog '{scheme}://'; use postgresql:// or sqlite:///")


def _s3_properties() -> dict[str, str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    properties = {}
    if endpoint:
        properties["s3.endpoint"] = endpoint
    if region:
        properties["s3.region"] = region
    return properties


def table_identifier(tenant: str, table: str) -> tuple[str, str]:
    """``(tenant, table)``: the tenant's namespace and the table's name, both checked."""
    validate_name("tenant", tenant)
    if not _TABLE_RE.fullmatch(table):
        raise ConfigError("table", f"{table!r} must be lower-case letters, digits and '_', starting with a letter")
    return (tenant, table)


def load_table(catalog: SqlCatalog, tenant: str, table: str) -> Table:
    """An existing table; a CatalogError naming it when it does not exist."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(table_identifier(tenant, table))
    except NoSuchTableError:
        raise CatalogError(f"table '{tenant}.{table}' does not exist; run its transform first") from None


def create_table(
    catalog: SqlCatalog, tenant: str, table: str, schema: StructType, partitioning: Sequence[str] = ()
) -> Table:
    """The table ``tenant.table``, created with ``schema`` and ``partitioning`` if it does not exist yet.

    Files written by Spark carry no Iceberg field ids, so the table maps columns by name (its default name mapping).
    """
    from pyiceberg.table import TableProperties
    from pyspark.sql.pandas.types import to_arrow_schema

    identifier = table_identifier(tenant, table)
    fields = [partition_field(text) for text in partitioning]
    catalog.create_namespace_if_not_exists(tenant)
    if catalog.table_exists(identifier):
        return catalog.load_table(identifier)
    with catalog.create_table_transaction(identifier, schema=to_arrow_schema(schema, timezone="UTC")) as created:
        with created.update_spec() as spec:
            for column, transform in fields:
                try:
                    name = column if transform == "identity" else f"{column}_{transform.split('[')[0]}"
                    spec.add_field(column, transform, name)
                except ValueError as exc:
                    raise ConfigError("partitioning", f"{table}: {column} {transform}: {exc}") from None
        mapping = created.table_metadata.schema().name_mapping.model_dump_json()
        created.set_properties({TableProperties.DEFAULT_NAME_MAPPING: mapping, **NO_COMMIT_RETRIES})
    return catalog.load_table(identifier)


def partition_field(text: str) -> tuple[str, str]:
    """``(column, pyiceberg transform)`` of a partitioning like ``month(occurred_at)``, ``bucket(16, customer_id)``,
    ``truncate(4, zip)`` or a bare column (identity)."""
    compact = text.strip()
    match = _PARTITION_RE.match(compact) or _PARTITION_RE.match(f"identity({compact})")
    if match is None:
        raise ConfigError("partitioning", f"'{text}' is not a transform like month(col) or bucket(16, col)")
    kind, width, column = match["transform"], match["width"], match["column"]
    if kind in ("bucket", "truncate"):
        if width is None:
            raise ConfigError("partitioning", f"'{text}' needs a width, e.g. {kind}(16, {column})")
        return column, f"{kind}[{width}]"
    if width is not None or kind not in ("identity", "year", "month", "day", "hour"):
        raise ConfigError("partitioning", f"'{text}': use identity, year, month, day, hour, bucket(N, ..) or truncate")
    return column, kind
