"""Reads the files of a Singer BATCH message (singer-sdk's flavour): JSON Lines (optionally gzip) or Parquet, each file
an absolute local path, a ``file://`` URL or ``s3://bucket/key``. JSONL files hold one record per line (not Singer
messages). Only regular files under the allowed prefixes are read, and sizes are capped (see ``BatchLimits``).
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from plugins.core.errors import CdpError, ObjectNotFoundError, ObjectTooLargeError
from plugins.core.serialization import MAX_RECORD_DEPTH, NotRepresentableError, dumps, non_json_value, parse_json
from plugins.core.storage import ObjectStore
from targets.s3raw.reader import line_size


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


DEFAULT_MAX_BATCH_FILE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_BATCH_DECOMPRESSED_BYTES = 1024 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BatchLimits:
    """Where BATCH files may be read from, and how big they may be."""

    allowed_prefixes: tuple[str, ...] = ()
    max_file_bytes: int = DEFAULT_MAX_BATCH_FILE_BYTES
    max_decompressed_bytes: int = DEFAULT_MAX_BATCH_DECOMPRESSED_BYTES


class BatchFileUnreadableError(CdpError):
    """An allowed BATCH file cannot be read (corrupt, or over a size limit): it goes to the DLQ, the run goes on."""


def sdk_default_batch_root() -> str:
    """Where singer-sdk writes batch files when ``batch_config.storage.root`` is unset: ``{tempdir}/singer-sdk``."""
    return os.path.join(tempfile.gettempdir(), "singer-sdk")


def allowed_prefixes(config: Mapping[str, Any]) -> tuple[str, ...]:
    """``batch_allowed_prefixes``; else the tap's batch folder as singer-sdk's ``batch_config.storage.root`` names
    it; else singer-sdk's default batch folder (``sdk_default_batch_root``)."""
    explicit = config.get("batch_allowed_prefixes")
    if explicit:
        return tuple(str(prefix) for prefix in explicit)
    storage = (config.get("batch_config") or {}).get("storage") or {}
    root = storage.get("root") if isinstance(storage, Mapping) else None
    if root and str(root) != "file://":  # "file://" is the SDK's schema default: its temporary folder.
        return (str(root),)
    return (sdk_default_batch_root(),)


def _location(url: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` or ``("file", "/absolute/path")``; refuses other schemes and relative paths."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc or ".." in parsed.path.split("/"):
            raise BatchManifestError(f"BATCH manifest entry '{url}': not a plain s3://bucket/key URL")
        return "s3", f"{parsed.netloc}{parsed.path}"
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise BatchManifestError(f"BATCH manifest entry '{url}': file:// URLs must name a local path")
        if not os.path.isabs(path):
            raise BatchManifestError(f"BATCH manifest entry '{url}': relative paths are refused; use an absolute path")
        return "file", os.path.realpath(path)  # Symlinks resolved: the real file must be under an allowed prefix.
    raise BatchManifestError(
        f"BATCH manifest entry '{url}': unsupported scheme '{parsed.scheme}://'; use a path or s3://"
    )


def _check_allowed(url: str, limits: BatchLimits) -> tuple[str, str]:
    kind, where = _location(url)
    for prefix in limits.allowed_prefixes:
        prefix_kind, prefix_where = _location(prefix.rstrip("/") or "/")
        if prefix_kind == kind and (where == prefix_where or where.startswith(prefix_where.rstrip("/") + "/")):
            return kind, where
    allowed = ", ".join(limits.allowed_prefixes) or "none"
    raise BatchManifestError(
        f"BATCH manifest entry '{url}' is outside the allowed locations ({allowed}); set batch_allowed_prefixes "
        "(or batch_config.storage.root, as the tap has it) to the tap's batch folder"
    )


def _read_file(url: str, kind: str, where: str, limits: BatchLimits, s3_endpoint_url: str | None) -> bytes:
    if kind == "s3":
        bucket, _, key = where.partition("/")
        store = ObjectStore(f"s3://{bucket}", s3_endpoint_url=s3_endpoint_url, setting="manifest")
        try:
            return store.read_bytes(key, max_bytes=limits.max_file_bytes)
        except ObjectTooLargeError:
            raise BatchFileUnreadableError(
                f"batch file is over max_batch_file_bytes ({limits.max_file_bytes})"
            ) from None
        except ObjectNotFoundError:
            raise BatchFileUnreadableError("batch file does not exist") from None
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the opened file itself.
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise BatchFileUnreadableError("batch file does not exist") from None
    except OSError as exc:
        raise BatchManifestError(f"BATCH manifest entry '{url}' cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise BatchManifestError(f"BATCH manifest entry '{url}' is not a regular file")
        # A chunk at a time: read(max_file_bytes + 1) would allocate the whole cap (256 MiB) for every file.
        chunks: list[bytes] = []
        size = 0
        while chunk := file.read(_CHUNK):
            size += len(chunk)
            if size > limits.max_file_bytes:
                raise BatchFileUnreadableError(f"batch file is over max_batch_file_bytes ({limits.max_file_bytes})")
            chunks.append(chunk)
    return b"".join(chunks)


def _gunzip_chunks(data: bytes) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member of ``data`` (as the SDK writes them), a chunk at a time."""
    while data:
        decompressor = zlib.decompressobj(wbits=31)
        chunk = decompressor.decompress(data, _CHUNK)
        while True:
            yield chunk
            if not decompressor.unconsumed_tail:
                break
            chunk = decompressor.decompress(decompressor.unconsumed_tail, _CHUNK)
        if not decompressor.eof:
            raise BatchFileUnreadableError("batch file is not a complete gzip stream (truncated or corrupt)")
        data = decompressor.unused_data


def _check_gunzipped_size(data: bytes, limit: int) -> None:
    """Decompress ``data`` once, keeping nothing, and refuse it when it is corrupt or over ``limit`` bytes."""
    size = 0
    try:
        for chunk in _gunzip_chunks(data):
            size += len(chunk)
            if size > limit:
                raise BatchFileUnreadableError(
                    f"batch file decompresses to over max_batch_decompressed_bytes ({limit})"
                )
    except zlib.error as exc:
        raise BatchFileUnreadableError(f"batch file is not valid gzip: {exc}") from None


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The newline-separated lines of ``chunks``, one at a time (a list of every line of a file of tiny lines would
    take some 40 bytes per line, many times the file's size)."""
    parts: list[bytes] = []  # The line being read, in pieces: joined once, however many chunks it spans.
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            parts.append(chunk[start:end])
            yield b"".join(parts)
            parts = []
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)


def read_batch_manifest(
    url: str,
    encoding: Mapping[str, Any],
    *,
    limits: BatchLimits,
    s3_endpoint_url: str | None = None,
) -> Iterator[BatchItem]:
    """Every record of one batch file, in order.

    A location outside ``limits.allowed_prefixes``, a relative path, a symlink escape or anything but a regular file
    raises BatchManifestError (the run stops). A file that is corrupt or over a size limit yields one item with its
    ``error`` (it goes to the DLQ) and nothing else.
    """
    file_format = encoding.get("format")
    compression = encoding.get("compression")
    if file_format not in ("jsonl", "parquet"):
        raise BatchManifestError(f"BATCH message: unsupported encoding format '{file_format}' (jsonl or parquet)")
    if file_format == "jsonl" and compression not in (None, "none", "gzip"):
        raise BatchManifestError(f"BATCH manifest entry '{url}': unsupported compression '{compression}'")
    kind, where = _check_allowed(url, limits)
    try:
        data = _read_file(url, kind, where, limits, s3_endpoint_url)
        # Every check runs before the first record is yielded, so a file over a limit goes to the DLQ whole; the
        # records are then produced one at a time, so memory stays bounded by the file, not by its count of records.
        if file_format == "jsonl":
            if compression == "gzip":
                _check_gunzipped_size(data, limits.max_decompressed_bytes)
                items: Iterator[BatchItem] = _jsonl_items(_lines(_gunzip_chunks(data)))
            else:
                items = _jsonl_items(_lines(iter((data,))))
        else:
            items = _parquet_items(_parquet_rows(data, limits.max_decompressed_bytes))
    except BatchFileUnreadableError as exc:
        yield BatchItem(line=0, error=str(exc))
        return
    yield from items


_PARQUET_BATCH_ROWS = 10_000


def _parquet_rows(data: bytes, limit: int) -> Iterator[dict[str, Any]]:
    """Checks the file's decoded size (what its metadata declares, and what decoding it really takes: a dictionary
    or run-length encoded column can declare a few KiB and decode to millions of values), then its rows a batch at a
    time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        size = sum(parquet.metadata.row_group(i).total_byte_size for i in range(parquet.metadata.num_row_groups))
        decoded = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            decoded += batch.nbytes + batch.num_rows * max(batch.num_columns, 1) * 8  # Each value costs at least 8.
            if max(size, decoded) > limit:
                raise BatchFileUnreadableError(
                    f"batch file decompresses to over max_batch_decompressed_bytes ({limit})"
                )
    except (pa.ArrowException, OSError) as exc:
        raise BatchFileUnreadableError(f"batch file is not valid Parquet: {exc}") from None
    return _parquet_batches(parquet)


def _parquet_batches(parquet: Any) -> Iterator[dict[str, Any]]:
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        rows: list[dict[str, Any]] = batch.to_pylist()
        yield from rows


def _parquet_items(rows: Iterator[dict[str, Any]]) -> Iterator[BatchItem]:
    for number, row in enumerate(rows, start=1):
        problem = non_json_value(row)
        if problem is not None:
            yield BatchItem(line=number, error=f"{problem} (Parquet row {number})")
            continue
        line = dumps(row)  # Parquet values (timestamps, decimals) become their JSON form, as a tap would send.
        yield BatchItem(line=number, record=parse_json(line), size=len(line))


def _jsonl_items(lines: Iterator[bytes]) -> Iterator[BatchItem]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, max_depth=MAX_RECORD_DEPTH)
        except ValueError as exc:
            reason = str(exc) if isinstance(exc, NotRepresentableError) else f"batch file line is not JSON: {exc}"
            yield BatchItem(line=number, error=reason, raw=line, size=len(line))
            continue
        yield BatchItem(line=number, record=record, size=line_size(line))
