"""Reading a list of files in Spark without Hadoop connectors: a Spark Python data source (pyspark 4) that splits the
list across tasks and runs a Python function on the executors for each task's files.

The raw zone's gzip NDJSON and the tables' Parquet on ``s3://`` are read this way, with pyarrow, since Spark has no
hadoop-aws here. The function must be importable by the executors (a module-level function of this package).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

#: ``read(files, options, column names)``: the Arrow batches of some files, with the schema's columns in order.
FileReader = Callable[[Sequence[str], Mapping[str, str], Sequence[str]], Iterator["pa.RecordBatch"]]


def read_files(
    spark: SparkSession,
    name: str,
    files: Sequence[str],
    schema: StructType,
    read: FileReader,
    options: Mapping[str, str] | None = None,
) -> DataFrame:
    """A DataFrame of ``schema`` from ``files``, split across at most ``defaultParallelism`` tasks, each running
    ``read`` on its share (``options`` are handed to it)."""
    from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

    class FilesPartition(InputPartition):
        def __init__(self, chunk: list[str]) -> None:
            super().__init__(chunk)
            self.files = chunk

    class FilesReader(DataSourceReader):
        def __init__(self, settings: dict[str, str], names: list[str]) -> None:
            self.files: list[str] = json.loads(settings.pop("files"))
            self.count = int(settings.pop("tasks"))
            self.settings = settings
            self.names = names

        def partitions(self) -> Sequence[InputPartition]:
            chunks = [self.files[i :: self.count] for i in range(self.count)]
            return [FilesPartition(chunk) for chunk in chunks if chunk]

        def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
            yield from read(partition.files, self.settings, self.names)  # type: ignore[attr-defined]

    class FilesSource(DataSource):
        @classmethod
        def name(cls) -> str:
            return name

        def reader(self, schema: Any) -> DataSourceReader:
            return FilesReader(dict(self.options), list(schema.fieldNames()))

    spark.dataSource.register(FilesSource)
    tasks = max(1, min(len(files), spark.sparkContext.defaultParallelism))
    return (
        spark.read.format(name)
        .schema(schema)
        .options(**(options or {}))
        .option("files", json.dumps(list(files)))
        .option("tasks", str(tasks))
        .load()
    )
