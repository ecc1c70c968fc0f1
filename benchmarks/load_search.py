"""The search loader against plain ``helpers.bulk`` on the same emulator, in the same run: documents per second.

    .venv/bin/python benchmarks/load_search.py                       # 100k rows on noida-db (Elasticsearch 8.15 API)
    .venv/bin/python benchmarks/load_search.py --flavour opensearch  # on osmem-server (OpenSearch API)
    .venv/bin/python benchmarks/load_search.py --es-url http://host:9200 [--flavour opensearch]

One Iceberg table of customer-like rows (the same 9 columns as benchmarks/load_postgres.py) in a temporary processed
zone, committed as data files of 100k rows. In turns, ``--rounds`` times each:

- **ours**: a full refresh by ``SearchLoader`` (template, new versioned index, streaming_bulk, verification, alias
  swap, old index deleted);
- **plain helpers.bulk**: the same Parquet rows read with pyarrow, one dict per row as ``_source``, sent by the
  client's ``helpers.bulk`` with the same chunk size into an index with the same mappings and the same loading
  settings (no replica, no refresh), then one refresh.

Prints documents/s per round, the medians and their ratio. Goal (issue 13): ours >= 0.8x plain helpers.bulk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.load_postgres import FILE_ROWS, rows, spark_schema, write_file  # noqa: E402

TENANT = "bench"
TABLE = "customers"
CHUNK_SIZE = 1000


def plain_bulk(loader: Any, files: list[str], mappings: dict[str, Any], index: str) -> float:
    """Create ``index`` like ours, then helpers.bulk of the files' rows; seconds from the first row to the refresh."""
    import pyarrow.parquet as pq

    if loader.opensearch:
        from opensearchpy import helpers
    else:
        from elasticsearch import helpers  # type: ignore[no-redef]

    client = loader.client
    if client.indices.exists(index=index):
        client.indices.delete(index=index)
    client.indices.create(
        index=index,
        body={"settings": {"number_of_replicas": 0, "refresh_interval": "-1"}, "mappings": mappings},
    )

    def actions() -> Any:
        for file in files:
            for batch in pq.ParquetFile(urlparse(file).path).iter_batches(65_536):
                for row in batch.to_pylist():
                    yield {"_index": index, "_id": row["customer_id"], "_source": row}

    started = time.monotonic()
    helpers.bulk(client, actions(), chunk_size=CHUNK_SIZE)
    client.indices.refresh(index=index)
    seconds = time.monotonic() - started
    client.indices.delete(index=index)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flavour", choices=["elasticsearch", "opensearch"], default="elasticsearch")
    parser.add_argument("--es-url", help="an existing cluster (default: an emulator started here)")
    args = parser.parse_args()

    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from loaders.elasticsearch.emulator import noida_elasticsearch
    from loaders.elasticsearch.loader import SearchLoader
    from loaders.elasticsearch.mappings import index_mappings
    from plugins.loaders.runner import load_tables
    from plugins.transforms.catalog import ProcessedZone, create_table
    from plugins.transforms.commit import commit_files

    with tempfile.TemporaryDirectory(prefix="cdp-bench-search-") as temp, ExitStack() as stack:
        folder = Path(temp)
        url = args.es_url
        if url is None and args.flavour == "opensearch":
            from osmem_server import OsmemServer

            url = stack.enter_context(OsmemServer.start(japanese=False)).url
        elif url is None:
            url = stack.enter_context(noida_elasticsearch(folder / "noida"))
        catalog = ProcessedZone((folder / "processed").as_uri(), f"sqlite:///{folder / 'catalog.db'}").open()
        table = create_table(catalog, TENANT, TABLE, spark_schema())
        files = [
            write_file(table, rows(start, min(FILE_ROWS, args.rows - start)), f"part-{start}")
            for start in range(0, args.rows, FILE_ROWS)
        ]
        commit_files(table, add=files)
        table.refresh()
        loader = stack.enter_context(
            SearchLoader(url, flavour=args.flavour, number_of_replicas=0, chunk_size=CHUNK_SIZE)
        )
        schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
        mappings = index_mappings(schema, ["customer_id"], opensearch=loader.opensearch)
        ours: list[float] = []
        plain: list[float] = []
        for round_number in range(1, args.rounds + 1):
            seconds = plain_bulk(loader, files, mappings, "bench_plain_bulk")
            plain.append(args.rows / seconds)
            started = time.monotonic()
            (done,) = load_tables(
                catalog, {"search": loader}, {TABLE: ("customer_id",)}, tenants=[TENANT], full_refresh=True
            )
            ours.append(done.result.inserted / (time.monotonic() - started))
            print(f"round {round_number}: plain helpers.bulk {plain[-1]:>9,.0f} docs/s   ours {ours[-1]:>9,.0f}")
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print(f"\n{args.rows:,} documents, {args.flavour} at {'the emulator' if args.es_url is None else 'the given URL'}")
    print(f"plain helpers.bulk: {plain_median:>9,.0f} docs/s (median of {args.rounds})")
    print(f"ours (full refresh):{ours_median:>9,.0f} docs/s")
    print(f"ratio:              {ours_median / plain_median:>9.2f}x  (goal >= 0.8x)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
