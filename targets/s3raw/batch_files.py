"""Reads the files of a Singer BATCH message (singer-sdk's flavour): JSON Lines (optionally gzip) or Parquet, each file
a local path, a ``file://`` URL or ``s3://bucket/key``. JSONL files hold one record per line (not Singer messages).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from plugins.errors import CdpError
from plugins.serialization import dumps
from plugins.storage import ObjectStore
from targets.s3raw.reader import line_size, parse_json


class BatchManifestError(CdpError):
    """A BATCH message names a file or an encoding the target cannot read."""


@dataclass(frozen=True)
class BatchItem:
    """One line of a batch file: a record, or why the line is not one."""

    line: int
    record: Any = None
    size: int = 0
    error: str | None = None
    raw: Any = None


def _open_store(url: str, s3_endpoint_url: str | None) -> tuple[ObjectStore, str]:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return ObjectStore(f"s3://{parsed.netloc}", s3_endpoint_url=s3_endpoint_url, setting="manifest"), parsed.path
    if parsed.scheme in ("", "file"):
        path = PurePosixPath(unquote(parsed.path) if parsed.scheme == "file" else url)
        return ObjectStore(str(path.parent), setting="manifest"), path.name
    raise BatchManifestError(
        f"BATCH manifest entry '{url}': unsupported scheme '{parsed.scheme}://'; use a path or s3://"
    )


def read_batch_manifest(
    url: str, encoding: Mapping[str, Any], *, s3_endpoint_url: str | None = None
) -> Iterator[BatchItem]:
    """Every record of one batch file, in order."""
    file_format = encoding.get("format")
    compression = encoding.get("compression")
    store, key = _open_store(url, s3_endpoint_url)
    data = store.read_bytes(key)
    if file_format == "jsonl":
        if compression == "gzip":
            data = gzip.decompress(data)  # Every gzip member, as the SDK writes them.
        elif compression not in (None, "none"):
            raise BatchManifestError(f"BATCH manifest entry '{url}': unsupported compression '{compression}'")
        yield from _jsonl_items(data)
    elif file_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        for number, row in enumerate(table.to_pylist(), start=1):
            line = dumps(row)  # Parquet values (timestamps, decimals) become their JSON form, as a tap would send.
            yield BatchItem(line=number, record=orjson.loads(line), size=len(line))
    else:
        raise BatchManifestError(f"BATCH message: unsupported encoding format '{file_format}' (jsonl or parquet)")


def _jsonl_items(data: bytes) -> Iterator[BatchItem]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError as exc:
            text = line.decode("utf-8", errors="replace")
            yield BatchItem(line=number, error=f"batch file line is not JSON: {exc}", raw=text, size=len(line))
            continue
        yield BatchItem(line=number, record=record, size=line_size(line))
