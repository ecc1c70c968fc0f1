"""Reading an Iceberg table's data files back into Spark: another transform's input, or the files a merge rewrites.

Spark here has no Iceberg runtime, so the table's snapshot is planned by pyiceberg (which files are live) and the
files are read like the raw zone: locally by Spark's own Parquet reader, on ``s3://`` by a Spark Python data source
(``cdp_parquet_files``) that reads each file with pyarrow on the executors. Every row carries the data file it came
from (``_cdp_data_file``, the path exactly as the table lists it), so a merge knows which files to replace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from plugins.core.storage import ObjectStore
from plugins.transforms.commit import live_data_files
from plugins.transforms.file_source import read_files

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table import Table
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DATA_FILE_COLUMN = "_cdp_data_file"
DATA_SOURCE_NAME = "cdp_parquet_files"


def table_struct(table: Table) -> StructType:
    """The table's current schema as a Spark struct."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema_to_pyarrow(table.schema(), include_field_ids=False))


def read_table(spark: SparkSession, table: Table, snapshot_id: int | None = None) -> DataFrame:
    """Every row of a snapshot of ``table`` (the current one by default; an older id travels back in time)."""
    return read_data_files(spark, table, sorted(live_data_files(table, snapshot_id)))


def read_data_files(spark: SparkSession, table: Table, paths: Sequence[str]) -> DataFrame:
    """The rows of some of ``table``'s data files, with ``_cdp_data_file``."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    schema = table_struct(table)
    columns = [*schema.fieldNames(), DATA_FILE_COLUMN]
    if not paths:
        return spark.createDataFrame([], StructType([*schema.fields, StructField(DATA_FILE_COLUMN, StringType())]))
    if all(path.startswith("file:") for path in paths):
        local = {ObjectStore(path).local_path("").as_posix(): path for path in paths}
        frame = spark.read.schema(schema).parquet(*local)
        # Spark reports each file as a URI of its own making; map it back to the path the table lists.
        mapping = F.create_map(*[F.lit(item) for pair in local.items() for item in pair])
        found = F.regexp_replace(F.col("_metadata.file_path"), r"^file:(//)?", "")
        return frame.withColumn(DATA_FILE_COLUMN, mapping[found]).select(*columns)
    endpoint = ObjectStore(paths[0]).s3_endpoint_url or ""
    with_file = StructType([*schema.fields, StructField(DATA_FILE_COLUMN, StringType())])
    options = {"endpoint": endpoint, "schema": schema.json()}
    return read_files(spark, DATA_SOURCE_NAME, paths, with_file, read_parquet_files, options)


def read_parquet_files(
    paths: Sequence[str], options: Mapping[str, str], names: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """The batches of each Parquet file with its path, read with pyarrow (runs on the executors). A column the file
    lacks (added to the table after it was written) reads as nulls, as with Spark's reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    from plugins.transforms.commit import conformed

    table_schema = to_arrow_schema(StructType.fromJson(json.loads(options["schema"])), timezone="UTC")
    columns = [name for name in names if name != DATA_FILE_COLUMN]
    schema = pa.schema([table_schema.field(name) for name in columns])
    for path in paths:
        store = ObjectStore(path, s3_endpoint_url=options.get("endpoint") or None)
        with store.fs.open_input_file(store.fs_path()) as stream:
            parquet = pq.ParquetFile(stream)
            present = [name for name in columns if name in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=present):
                rows = conformed(pa.Table.from_batches([batch]), schema)
                yield from rows.append_column(DATA_FILE_COLUMN, pa.array([path] * rows.num_rows)).to_batches()
