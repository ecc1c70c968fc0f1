"""The embedded webhook log: append-only segment files on local disk, group commit, one fsync per group.

Layout: ``{folder}/segments/{first sequence:020d}.seg`` holding records ``[sequence u64][length u32][crc32 u32]
[JSON body]``; ``{folder}/log-id`` names this log (made by its first writer), and positions are
``{log id}:{sequence:020d}``, so a bookmark from another (or a recreated) log is recognised; ``{folder}/consumers.json``
holds each consumer's committed position; a sealed segment gets a
``.idx`` sidecar (per consumer, its last sequence in the segment) the first time compaction looks at it. Only the
newest segment is ever written to; after a crash its torn tail (a record cut short or failing its CRC) is zeroed
when the next writer starts. One writer per folder (an exclusive lock); readers need no lock.

Segments are preallocated: a new one is written full of zeros (and synced) ahead of time, by a background thread,
and records overwrite the zeros; a header of zeros ends the records. Syncing an overwrite of allocated blocks is a
pure data flush, while syncing an append must also commit the file's new size and blocks to the file system
journal: on the development VM's ext4, fdatasync of 8 KiB took 0.13 ms instead of 0.31 ms (PostgreSQL zero-fills
its WAL segments for the same reason). A sealed segment is cut to its records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from plugins.core.errors import CdpError, StorageError
from plugins.core.serialization import loads
from plugins.core.storage import fsync_dir
from plugins.webhooks.group_commit import GroupCommitWriter, LoopGroupCommit, LoopWriteResult, WriteResult
from plugins.webhooks.log import (
    BookmarkError,
    CompactionResult,
    DurationHistogram,
    LogEntry,
    StoredEntry,
    consumer_name,
)

_HEADER = struct.Struct("<QII")
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
SPARE_NAME = "next-segment.tmp"  # The next segment, preallocated; not a segment until renamed.
LOG_ID_NAME = "log-id"
CONSUMERS_NAME = "consumers.json"
_ZEROS = bytes(1024 * 1024)
# The spare is written and synced a little at a time, with a pause between the pieces: each of its syncs is short,
# so a group's sync that queues behind one waits little, and the disk is left free in between. Measured in process
# (32 appends at a time, 4 MiB segments, two interleaved pairs of 15 s on the shared VM): 2 MiB unpaced, sync mean
# 3.1-3.7 ms and 7.5k-8.8k events/s; 256 KiB with 2 ms pauses, 2.5 ms and 10.4k-10.5k. A 16 MiB spare still takes
# well under the seconds a segment takes to fill.
_SPARE_SYNC_BYTES = 256 * 1024
_SPARE_PAUSE_SECONDS = 0.002
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_DEDUPE_CAPACITY = 200_000


class LogLockedError(CdpError):
    """Another receiver is already writing to this log folder."""


@dataclass(frozen=True)
class _Segment:
    base: int
    path: Path


def _dedupe_key(tenant: str, provider: str, event_id: str) -> str:
    """One string, not a tuple: the collector tracks tuples, and 200k remembered keys that survive every young
    collection made each one traverse them (a 10-50 ms pause per 50k events under sustained load); it ignores strings.
    Tenant and provider names cannot hold the separator."""
    return f"{tenant}\x1f{provider}\x1f{event_id}"


def _segment_name(sequence: int) -> str:
    return f"{sequence:020d}"


def _parse_position(position: str | None) -> tuple[str | None, int]:
    """``(log id, sequence)`` of a position; the id is None for positions written before logs had one."""
    if position is None or position == "":
        return None, 0
    log_id, sep, sequence = position.rpartition(":")
    if not sequence.isdigit() or (sep and not log_id):
        raise BookmarkError(f"'{position}' is not a position of a file webhook log")
    return (log_id if sep else None), int(sequence)


def encode_record(sequence: int, entry: LogEntry) -> bytes:
    # The provider's own JSON text when there is one: stored as sent, never re-encoded from the parsed payload.
    payload = entry.payload if entry.payload_json is None else orjson.Fragment(entry.payload_json)
    body = orjson.dumps(
        [entry.tenant, entry.provider, entry.stream, entry.event_id, entry.topic, entry.received_at, payload]
    )
    return _HEADER.pack(sequence, len(body), zlib.crc32(body)) + body


def scan_records(data: bytes) -> Iterator[tuple[int, int, list[Any]]]:
    """``(sequence, end offset, fields)`` of each intact record; stops at the first torn or corrupt one."""
    offset = 0
    size = len(data)
    while offset + _HEADER.size <= size:
        sequence, length, crc = _HEADER.unpack_from(data, offset)
        if sequence == 0 or length == 0:  # The preallocated zeros after the last record.
            return
        start = offset + _HEADER.size
        end = start + length
        if end > size:
            return
        body = data[start:end]
        if zlib.crc32(body) != crc:
            return
        yield sequence, end, loads(body)
        offset = end


class _Descriptor:
    """A segment's descriptor shared by the writer and the syncs in flight; closed once retired and unused.

    A segment is fully synced when it is retired (at a roll), so a sync that comes later has nothing to flush.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._users = 0
        self._retired = False
        self._closed = False

    def sync(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._users += 1
        try:
            os.fdatasync(self.fd)
        finally:
            with self._lock:
                self._users -= 1
                self._close_if_done()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            self._close_if_done()

    def _close_if_done(self) -> None:
        if self._retired and self._users == 0 and not self._closed:
            os.close(self.fd)
            self._closed = True


def _write_zeros(fd: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        offset += os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - offset)], offset)


def _prepare_spare(path: Path, size: int, pause: float = _SPARE_PAUSE_SECONDS) -> None:
    """Write the next segment full of zeros and sync it, so that later syncs of records in it are pure data flushes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # A piece at a time, each synced: the receiver's own syncs never queue behind one long flush of zeros.
        for start in range(0, size, _SPARE_SYNC_BYTES):
            _write_zeros(fd, start, min(size, start + _SPARE_SYNC_BYTES))
            os.fdatasync(fd)
            time.sleep(pause)
    finally:
        os.close(fd)


class FileWebhookLog:
    """Segment files in a local folder. ``start_writer`` before appending; reading works from any process."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        dedupe_capacity: int = DEFAULT_DEDUPE_CAPACITY,
    ) -> None:
        self.folder = Path(folder)
        self.url = str(self.folder)
        self.segment_bytes = segment_bytes
        self.dedupe_capacity = dedupe_capacity
        self._segments_dir = self.folder / "segments"
        # Appends from the receiver's event loop commit on the loop (LoopGroupCommit); appends from plain threads go
        # through the writer thread. Both write under _write_lock, so the log stays one ordered sequence.
        self._writer: GroupCommitWriter[LogEntry] | None = None
        self._loop_writer: LoopGroupCommit[LogEntry] | None = None
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._descriptor: _Descriptor | None = None
        self._segment_path: Path | None = None
        self._size = 0
        self._next_sequence = 1
        # _dedupe_key of the last dedupe_capacity events, oldest first. An OrderedDict, whose oldest key goes in O(1):
        # a plain dict finds its first key by skipping the slots of every key deleted before it, so once the log
        # remembered 200k events each new one cost 40-400 µs more (and the sustained benchmark's later rounds half
        # their rate).
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._spare_path = self._segments_dir / SPARE_NAME
        self._spare_maker: concurrent.futures.ThreadPoolExecutor | None = None
        self._spare: concurrent.futures.Future[None] | None = None
        self._roll_seconds = DurationHistogram()

    # -- writing ----------------------------------------------------------------------------------------------
    def start_writer(self) -> None:
        if self._writer is not None:
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise StorageError(f"the webhook log path {self.folder} is a file; give --log-url a folder")
        self._segments_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.folder / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            msg = f"another receiver is writing to {self.folder}; run several receivers on a postgresql:// log instead"
            raise LogLockedError(msg) from exc
        self._lock_fd = lock_fd
        if self.identity is None:
            id_path = self.folder / LOG_ID_NAME
            tmp = id_path.with_suffix(".tmp")
            tmp.write_text(f"w{uuid.uuid4().hex[:15]}")  # A letter first: sorts after every older, all-digit position.
            os.replace(tmp, id_path)
            fsync_dir(self.folder)
        self._spare_maker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhook-log-spare")
        self._recover()
        self._writer = GroupCommitWriter(self._write_batch)
        self._loop_writer = LoopGroupCommit(self._write_batch_from_loop)

    def _recover(self) -> None:
        segments = self._segments()
        for segment in segments[:-1]:
            for _, _, fields in scan_records(segment.path.read_bytes()):
                self._remember(_dedupe_key(fields[0], fields[1], fields[3]))
        if not segments:
            self._open_segment(1)
            return
        last = segments[-1]
        data = last.path.read_bytes()
        valid_end = 0
        next_sequence = last.base
        for sequence, end, fields in scan_records(data):
            self._remember(_dedupe_key(fields[0], fields[1], fields[3]))
            valid_end = end
            next_sequence = sequence + 1
        fd = os.open(last.path, os.O_WRONLY)
        # A torn tail from a crash (never acknowledged) becomes zeros again, and the segment is preallocated to its
        # full size if it is shorter (a crash before its first record, or a log written before preallocation).
        dirty_end = len(data.rstrip(b"\0"))
        if dirty_end > valid_end or len(data) < self.segment_bytes:
            _write_zeros(fd, valid_end, max(dirty_end, self.segment_bytes))
            os.fdatasync(fd)
        self._next_sequence = next_sequence
        self._use_segment(fd, last.path, valid_end)
        self._start_spare()

    def _start_spare(self) -> None:
        assert self._spare_maker is not None
        self._spare = self._spare_maker.submit(_prepare_spare, self._spare_path, self.segment_bytes)

    def _open_segment(self, base: int) -> None:
        """Start segment ``base``: the spare, renamed (made now if it is not ready or could not be made)."""
        path = self._segments_dir / f"{_segment_name(base)}{SEGMENT_SUFFIX}"
        spare, self._spare = self._spare, None
        try:
            if spare is None:
                raise FileNotFoundError(self._spare_path)
            spare.result()  # Normally long done: a segment takes seconds to fill, its spare milliseconds to make.
        except OSError:
            # Raises if the disk really cannot take it; no pauses, since the loop waits for it.
            _prepare_spare(self._spare_path, self.segment_bytes, pause=0)
        os.replace(self._spare_path, path)
        fsync_dir(self._segments_dir)
        self._use_segment(os.open(path, os.O_WRONLY), path, 0)
        self._next_sequence = base
        self._start_spare()

    def _use_segment(self, fd: int, path: Path, size: int) -> None:
        if self._descriptor is not None:
            self._descriptor.retire()  # Closed as soon as no sync in flight uses it.
        self._fd = fd
        self._descriptor = _Descriptor(fd)
        self._segment_path = path
        self._size = size

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > self.dedupe_capacity:
            self._seen.popitem(last=False)

    def _write_batch(self, entries: list[LogEntry]) -> WriteResult:
        """Write the new entries in order; the returned sync makes them durable."""
        with self._write_lock:
            flags, descriptor, _ = self._write_batch_locked(entries)
        return flags, descriptor.sync

    def _write_batch_from_loop(self, entries: list[LogEntry]) -> LoopWriteResult:
        """Write the new entries in order; an fdatasync of the returned file makes them durable."""
        with self._write_lock:
            flags, _, path = self._write_batch_locked(entries)
        return flags, str(path)

    def _write_batch_locked(self, entries: list[LogEntry]) -> tuple[list[bool], _Descriptor, Path]:
        assert self._fd is not None
        assert self._descriptor is not None
        assert self._segment_path is not None
        flags: list[bool] = []
        batch_keys: dict[str, None] = {}  # In log order: the oldest are forgotten first.
        chunks: list[bytes] = []
        sequence = self._next_sequence
        for entry in entries:
            key = _dedupe_key(entry.tenant, entry.provider, entry.event_id)
            if key in self._seen or key in batch_keys:
                flags.append(False)
                continue
            batch_keys[key] = None
            chunks.append(encode_record(sequence, entry))
            sequence += 1
            flags.append(True)
        fd, descriptor, path = self._fd, self._descriptor, self._segment_path
        if not chunks:
            # Only duplicates: their originals may still be waiting for a sync, so these wait for one too.
            return flags, descriptor, path
        data = b"".join(chunks)
        try:
            written = os.pwrite(fd, data, self._size)
            if written != len(data):
                raise StorageError(f"short write to the webhook log in {self.folder} (disk full?)")
        except BaseException:
            with contextlib.suppress(OSError):  # Readers must not see part of a group that was never acknowledged.
                _write_zeros(fd, self._size, self._size + len(data))
            raise
        self._size += len(data)
        self._next_sequence = sequence
        for key in batch_keys:  # Later groups see these as duplicates; if the sync fails, the writer fails for good.
            self._remember(key)
        if self._size >= self.segment_bytes:
            started = time.perf_counter()
            os.fdatasync(fd)  # The sealed segment is complete on disk before the next one starts.
            os.ftruncate(fd, self._size)  # Its preallocated zeros go.
            self._open_segment(self._next_sequence)
            self._roll_seconds.observe(time.perf_counter() - started)
        return flags, descriptor, path

    async def append(self, entries: Sequence[LogEntry]) -> list[bool]:
        if self._loop_writer is None:
            raise CdpError("the webhook log writer is not started")
        return await self._loop_writer.submit(entries)

    def append_sync(self, entries: Sequence[LogEntry]) -> list[bool]:
        if self._writer is None:
            raise CdpError("the webhook log writer is not started")
        return self._writer.submit_sync(entries)

    @property
    def queue_depth(self) -> int:
        threads = self._writer.queue_depth if self._writer is not None else 0
        return threads + (self._loop_writer.queue_depth if self._loop_writer is not None else 0)

    def histograms(self) -> dict[str, DurationHistogram]:
        found = {"roll": self._roll_seconds}
        if self._loop_writer is not None:
            found["sync"] = self._loop_writer.sync_seconds
        return found

    @property
    def failed(self) -> BaseException | None:
        """Why the log stopped acknowledging appends (a failed sync), if it did."""
        for writer in (self._loop_writer, self._writer):
            if writer is not None and writer.failed is not None:
                return writer.failed
        return None

    def close(self) -> None:
        if self._loop_writer is not None:
            self._loop_writer.close()
            self._loop_writer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spare_maker is not None:
            self._spare_maker.shutdown(wait=True)
            self._spare_maker = None
            self._spare = None
        if self._descriptor is not None:
            self._descriptor.retire()
            self._descriptor = None
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading ----------------------------------------------------------------------------------------------
    @property
    def identity(self) -> str | None:
        """This log's id (None until its first writer started)."""
        try:
            return (self.folder / LOG_ID_NAME).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _position(self, sequence: int, log_id: str | None) -> str:
        return f"{log_id}:{sequence:020d}" if log_id else f"{sequence:020d}"

    def _end(self) -> int:
        """The last sequence this log has handed out (0 for an empty log); compaction keeps the newest segment."""
        segments = self._segments()
        if not segments:
            return 0
        last = segments[-1]
        end = last.base - 1
        with contextlib.suppress(FileNotFoundError):
            for sequence, _, _ in scan_records(last.path.read_bytes()):
                end = sequence
        return end

    def check_bookmark(self, position: str | None) -> None:
        log_id, sequence = _parse_position(position)
        own = self.identity
        if log_id is not None and log_id != own:
            raise BookmarkError(
                f"bookmark {position} belongs to another webhook log than {self.folder} (id {own or 'none yet'}); "
                "the log was recreated or moved: reset the extractor's state (docs/webhooks.md)"
            )
        end = self._end()
        if sequence > end:
            raise BookmarkError(
                f"bookmark {position} is past the end of the webhook log {self.folder} (last position "
                f"{self._position(end, own)}); the log was recreated: reset the extractor's state (docs/webhooks.md)"
            )

    def _segments(self) -> list[_Segment]:
        if not self._segments_dir.is_dir():
            return []
        found = []
        for path in self._segments_dir.iterdir():
            if path.suffix == SEGMENT_SUFFIX and path.stem.isdigit():
                found.append(_Segment(int(path.stem), path))
        return sorted(found, key=lambda segment: segment.base)

    def read(self, tenant: str, provider: str, stream: str, after: str | None = None) -> Iterator[StoredEntry]:
        _, after_sequence = _parse_position(after)
        log_id = self.identity
        segments = self._segments()
        for index, segment in enumerate(segments):
            following = segments[index + 1].base if index + 1 < len(segments) else None
            if following is not None and following - 1 <= after_sequence:
                continue
            try:
                data = segment.path.read_bytes()
            except FileNotFoundError:  # Compacted while we listed: every consumer of it was past it.
                continue
            for sequence, _, fields in scan_records(data):
                if sequence <= after_sequence or fields[0] != tenant or fields[1] != provider or fields[2] != stream:
                    continue
                yield StoredEntry(self._position(sequence, log_id), LogEntry(*fields))

    # -- consumers and compaction -----------------------------------------------------------------------------
    def consumers(self) -> dict[str, str]:
        path = self.folder / CONSUMERS_NAME
        if not self.folder.is_dir():
            if self.folder.exists():
                raise StorageError(f"the webhook log path {self.folder} is a file, not a log folder")
            raise StorageError(f"no webhook log at {self.folder} (check --log-url or CDP_WEBHOOK_LOG_URL)")
        if not path.exists():
            return {}
        try:
            value = orjson.loads(path.read_bytes())
            if not isinstance(value, dict):
                raise TypeError("not an object")
            return {str(name): str(position) for name, position in value.items()}
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StorageError(
                f"{path} is corrupt ({exc}); restore it from a backup, or delete it to make every consumer start "
                "over (compaction then keeps everything until each one commits again)"
            ) from exc

    def commit(self, consumer: str, position: str) -> None:
        _parse_position(position)
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.folder / "consumers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.consumers()
            current[consumer] = position
            target = self.folder / CONSUMERS_NAME
            tmp = target.with_suffix(".json.tmp")
            with open(tmp, "wb") as handle:
                handle.write(orjson.dumps(current, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            fsync_dir(self.folder)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _segment_index(self, segment: _Segment) -> dict[str, Any]:
        """Per consumer, the last sequence it has in a sealed segment, plus the entry count (cached beside it)."""
        index_path = segment.path.with_suffix(INDEX_SUFFIX)
        if index_path.exists():
            cached: dict[str, Any] = orjson.loads(index_path.read_bytes())
            return cached
        last: dict[str, int] = {}
        count = 0
        for sequence, _, fields in scan_records(segment.path.read_bytes()):
            last[consumer_name(fields[0], fields[1], fields[2])] = sequence
            count += 1
        index = {"entries": count, "last": last}
        index_path.write_bytes(orjson.dumps(index))
        return index

    def compact(self) -> CompactionResult:
        own = self.identity
        committed: dict[str, int] = {}
        for name, position in self.consumers().items():
            log_id, sequence = _parse_position(position)
            committed[name] = sequence if log_id is None or log_id == own else 0  # Another log's: nothing confirmed.
        segments = self._segments()
        removed = removed_entries = 0
        details = []
        for segment in segments[:-1]:  # The newest segment may still be appended to.
            index = self._segment_index(segment)
            waiting = [name for name, last in index["last"].items() if committed.get(name, 0) < last]
            if waiting:
                continue
            segment.path.unlink(missing_ok=True)
            segment.path.with_suffix(INDEX_SUFFIX).unlink(missing_ok=True)
            removed += 1
            removed_entries += int(index["entries"])
            details.append(segment.path.name)
        return CompactionResult(removed, removed_entries, len(segments) - removed, details)
