"""Reading raw-zone batches into Spark with an explicit schema, the same way for local and ``s3://`` raw zones.

Local raw zones go through Spark's own JSON reader (gzip NDJSON). ``s3://`` raw zones, where Spark has no hadoop-aws,
go through a Spark Python data source (``cdp_raw_ndjson``): the file list is split across tasks and each task reads
its files with pyarrow on the executors; Spark's own JSON parser (``from_json``) then applies the schema. Both give
the same columns: the schema's, ``_cdp_corrupt_record`` (the line of a row that did not parse, else null) and
``_cdp_source_file`` (the batch's raw-zone key).
"""

from __future__ import annotations

import gzip
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugins.core.layout import BATCH_SUFFIX, parse_batch_key, sanitize_stream_name, validate_name
from plugins.core.storage import ObjectStore
from plugins.transforms.file_source import read_files
from plugins.transforms.raw_schema import CORRUPT_RECORD_COLUMN, SOURCE_FILE_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DATA_SOURCE_NAME = "cdp_raw_ndjson"
#: A raw-zone key at the end of a file's URL: tenant/provider/year=/month=/day=/file.
_KEY_PATTERN = r"([^/]+/[^/]+/year=\d{4}/month=\d{2}/day=\d{2}/[^/]+)$"
_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_RECORD_COLUMN}


@dataclass(frozen=True)
class RawFile:
    """One batch of a subject in the raw zone."""

    key: str
    size: int


def list_raw_files(store: ObjectStore, tenant: str, provider: str, stream: str) -> list[RawFile]:
    """Every batch of ``tenant/provider/stream`` in the raw zone, sorted by key (landing day, then time)."""
    validate_name("tenant", tenant)
    validate_name("provider", provider)
    wanted = sanitize_stream_name(stream)
    found = []
    for info in store.iter_objects(f"{tenant}/{provider}"):
        if not info.key.endswith(BATCH_SUFFIX):
            continue
        try:
            key = parse_batch_key(info.key)
        except ValueError:
            continue  # Not a batch of the layout (a stray upload): never read.
        if key.error_type is None and key.stream == wanted:
            found.append(RawFile(key=info.key, size=info.size))
    return sorted(found, key=lambda raw: raw.key)


def pending_raw_files(
    store: ObjectStore, tenant: str, provider: str, stream: str, processed: Collection[str]
) -> list[RawFile]:
    """The subject's batches not yet in ``processed`` (a table's record, see ``commit.processed_raw_files``)."""
    return [raw for raw in list_raw_files(store, tenant, provider, stream) if raw.key not in processed]


def read_raw(spark: SparkSession, store: ObjectStore, keys: Sequence[str], schema: StructType) -> DataFrame:
    """The records of the batches ``keys`` of ``store`` (a raw zone), read with ``schema`` (see the module doc)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    with_corrupt = StructType([*schema.fields, StructField(CORRUPT_RECORD_COLUMN, StringType())])
    columns = [*schema.fieldNames(), CORRUPT_RECORD_COLUMN, SOURCE_FILE_COLUMN]
    if not keys:
        return spark.createDataFrame(
            [], StructType([*with_corrupt.fields, StructField(SOURCE_FILE_COLUMN, StringType())])
        )
    if not store.is_s3:
        frame = spark.read.schema(with_corrupt).options(**_JSON_OPTIONS).json([str(store.local_path(k)) for k in keys])
        frame = frame.withColumn(SOURCE_FILE_COLUMN, F.regexp_extract(F.col("_metadata.file_path"), _KEY_PATTERN, 1))
        return frame.select(*columns)
    lines = read_files(
        spark,
        DATA_SOURCE_NAME,
        keys,
        StructType([StructField(SOURCE_FILE_COLUMN, StringType()), StructField("value", StringType())]),
        read_lines,
        {"root": store.url, "endpoint": store.s3_endpoint_url or ""},
    )
    parsed = lines.select(F.from_json("value", with_corrupt, _JSON_OPTIONS).alias("record"), SOURCE_FILE_COLUMN)
    return parsed.select("record.*", SOURCE_FILE_COLUMN).select(*columns)


def read_lines(keys: Sequence[str], options: Mapping[str, str], names: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Each batch's NDJSON lines with its key, one Arrow batch per file, read with pyarrow (runs on the executors)."""
    import pyarrow as pa

    store = ObjectStore(options["root"], s3_endpoint_url=options.get("endpoint") or None, setting="raw_url")
    for key in keys:
        lines = [line for line in gzip.decompress(store.read_bytes(key)).decode().split("\n") if line.strip()]
        yield pa.RecordBatch.from_pydict({SOURCE_FILE_COLUMN: [key] * len(lines), "value": lines})
