"""Group commit: one writer thread turns many concurrent append requests into one durable write (one fsync).

Requests wait on a future; the thread takes everything queued, hands it to the backend's ``write_batch`` as one
batch, and resolves every waiting future with its own slice of the results. Under load, the batch grows with the
queue, so the cost of the fsync is shared by as many requests as arrived while the previous one ran.

A backend whose write is only durable after a separate sync (the segment files) returns that sync from
``write_batch``: the writer thread then goes on appending the next group while up to ``max_in_flight`` syncs run in
parallel (each one started after its group was written, so it covers it). Disks complete concurrent flushes together,
so a group no longer waits behind the previous group's fsync. A failed sync fails the writer for good: from then on
nothing is acknowledged until a restart recovers the log from what is really on disk.

The file log's appends from the receiver's event loop use ``LoopGroupCommit`` instead (below): the loop writes each
group itself and a helper process runs the fdatasync, so no thread hands results back across the GIL. The writer
thread serves callers outside an event loop and backends whose writes block on the network (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from plugins.core.errors import CdpError
from plugins.webhooks.log import DurationHistogram

T = TypeVar("T")
Outcome = list[bool] | BaseException
WriteResult = tuple[list[bool], Callable[[], None] | None]  # Flags, and the sync that makes them durable (if any).
# One sync at a time while the next group is written: on a 2-core machine more sync threads only fought the event
# loop for the GIL (benchmarks/webhook_load.py: median 7.7k req/s with 1 against 4.9k with 4).
DEFAULT_MAX_IN_FLIGHT = 1


class LogClosedError(CdpError):
    """An append arrived after the webhook log was closed."""


class LogFailedError(CdpError):
    """A sync of the webhook log failed; nothing more is acknowledged until the receiver restarts."""


@dataclass
class _Request(Generic[T]):
    """Queued items and where their outcome goes: an asyncio future (resolved in its loop) or a plain future."""

    items: Sequence[T]
    future: asyncio.Future[list[bool]] | concurrent.futures.Future[list[bool]]
    loop: asyncio.AbstractEventLoop | None = None


def _settle(future: asyncio.Future[list[bool]] | concurrent.futures.Future[list[bool]], outcome: Outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_all(settlements: list[tuple[asyncio.Future[list[bool]], Outcome]]) -> None:
    for future, outcome in settlements:
        _settle(future, outcome)


class GroupCommitWriter(Generic[T]):
    """A writer thread calling ``write_batch(items) -> [stored?]`` for every group of queued requests."""

    def __init__(
        self,
        write_batch: Callable[[list[T]], WriteResult],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        name: str = "webhook-log-writer",
    ) -> None:
        self._write_batch = write_batch
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._syncers = concurrent.futures.ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"{name}-sync")
        self._failed: BaseException | None = None
        self._pending: list[_Request[T]] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the next group commit."""
        return len(self._pending)

    @property
    def failed(self) -> BaseException | None:
        """Why the writer stopped acknowledging (a failed sync), if it did."""
        return self._failed

    def _enqueue(self, request: _Request[T]) -> None:
        with self._condition:
            if self._closed:
                raise LogClosedError("the webhook log is closed")
            self._pending.append(request)
            self._condition.notify()

    async def submit(self, items: Sequence[T]) -> list[bool]:
        """Wait until ``items`` are durable; one flag per item: True stored, False dropped as a duplicate."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._enqueue(_Request(items, future, loop))
        return await future

    def submit_sync(self, items: Sequence[T], timeout: float | None = None) -> list[bool]:
        """``submit`` for callers outside an event loop."""
        future: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
        self._enqueue(_Request(items, future))
        return future.result(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if not self._pending and self._closed:
                    return
                group, self._pending = self._pending, []
            items = [item for request in group for item in request.items]
            sync: Callable[[], None] | None = None
            outcomes: list[Outcome] = []
            try:
                if self._failed is not None:
                    raise LogFailedError(f"the webhook log failed earlier ({self._failed}); restart the receiver")
                results, sync = self._write_batch(items)
            except BaseException as exc:  # Every waiting request learns the write failed; none is acknowledged.
                outcomes = [exc] * len(group)
            else:
                offset = 0
                for request in group:
                    outcomes.append(results[offset : offset + len(request.items)])
                    offset += len(request.items)
            if sync is None:
                self._resolve(group, outcomes)
            else:
                self._slots.acquire()  # At most max_in_flight syncs; meanwhile the next group grows.
                self._syncers.submit(self._sync_then_resolve, group, outcomes, sync)

    def _sync_then_resolve(self, group: list[_Request[T]], outcomes: list[Outcome], sync: Callable[[], None]) -> None:
        try:
            sync()
            if self._failed is not None:
                raise LogFailedError(f"the webhook log failed earlier ({self._failed}); restart the receiver")
        except BaseException as exc:
            self._failed = self._failed or exc
            outcomes = [exc] * len(group)
        finally:
            self._slots.release()
        self._resolve(group, outcomes)

    @staticmethod
    def _resolve(group: list[_Request[T]], outcomes: list[Outcome]) -> None:
        """One wake-up per event loop for the whole group, rather than one per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[bool]], Outcome]]] = {}
        for request, outcome in zip(group, outcomes, strict=True):
            if request.loop is None:
                _settle(request.future, outcome)
            else:
                by_loop.setdefault(request.loop, []).append((request.future, outcome))  # type: ignore[arg-type]
        for loop, settlements in by_loop.items():
            with contextlib.suppress(RuntimeError):  # A loop closed while waiting: nobody is left to answer.
                loop.call_soon_threadsafe(_settle_all, settlements)

    def close(self, timeout: float = 10) -> None:
        """Finish the queued requests, then stop the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)
        self._syncers.shutdown(wait=True)


HELPER_SCRIPT = str(Path(__file__).with_name("fsync_helper.py"))
LoopWriteResult = tuple[list[bool], str]  # Flags, and the path of the file whose sync makes them durable.
# Sync requests the loop may have sent and not had answered. One is not enough: the next group would wait for the
# answer, and for the loop to read it. The helper starts a sync for each request as it arrives, while earlier ones
# still run (fsync_helper.MAX_PARALLEL_SYNCS, the same number). With wrk, 32 connections, medians of 4 interleaved
# rounds, when the helper synced one request at a time: 1 in flight 9.3k req/s; 2: 10.8-12.8k; 4: 10.4-13.3k;
# 8: 9.7-12.4k.
MAX_SYNCS_IN_FLIGHT = 4


class LoopGroupCommit(Generic[T]):
    """Group commit on the receiver's event loop; the fdatasync runs in a helper process (``fsync_helper.py``).

    Requests that arrive in one loop iteration form a group, which the loop writes at once (a page-cache write), then
    asks the helper to sync; while it syncs, the loop goes on serving requests, and the helper starts a sync for each
    group written meanwhile at once, beside the one running (fdatasync flushes every write made before it starts).
    The answers wake the loop through a pipe, so nothing waits for the GIL and the loop never
    blocks on the disk. At most ``MAX_SYNCS_IN_FLIGHT`` requests are unanswered (groups written beyond that wait for
    an answer), so the pipe never fills. A failed sync, or a helper that dies, fails the log for good: nothing more
    is acknowledged until a restart recovers it from what is really on disk.
    """

    def __init__(self, write_batch: Callable[[list[T]], LoopWriteResult]) -> None:
        self._write_batch = write_batch
        self._pending: list[_Request[T]] = []  # Submitted in this loop iteration, not written yet.
        self._written: list[tuple[_Request[T], list[bool]]] = []  # Written, waiting for the next sync request.
        self._in_flight: collections.deque[list[tuple[_Request[T], list[bool]]]] = collections.deque()  # Per request.
        self._sync_started: collections.deque[float] = collections.deque()  # When each request in flight was sent.
        self.sync_seconds = DurationHistogram()  # From a sync request to its answer.
        self._sync_path = ""
        self._flush_scheduled = False
        self._failed: BaseException | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._to_helper = -1  # The helper's stdin and stdout.
        self._from_helper = -1
        self._answers = b""

    @property
    def queue_depth(self) -> int:
        """Requests waiting for their group to be written or synced."""
        return len(self._pending) + len(self._written) + sum(len(batch) for batch in self._in_flight)

    @property
    def failed(self) -> BaseException | None:
        """Why the log stopped acknowledging, if it did."""
        return self._failed

    async def submit(self, items: Sequence[T]) -> list[bool]:
        """Wait until ``items`` are durable; one flag per item: True stored, False dropped as a duplicate."""
        if self._closed:
            raise LogClosedError("the webhook log is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._attach(loop)
        future: asyncio.Future[list[bool]] = loop.create_future()
        self._pending.append(_Request(items, future, loop))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # After every request already runnable in this iteration.
        return await future

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.queue_depth:
            raise CdpError("the webhook log is in use on another event loop")
        if self._helper is None:
            helper = subprocess.Popen(
                [sys.executable, "-I", HELPER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            if helper.stdin is None or helper.stdout is None:  # Never: both were asked for as pipes.
                raise CdpError("the fsync helper process has no pipes")
            self._helper, self._to_helper, self._from_helper = helper, helper.stdin.fileno(), helper.stdout.fileno()
            os.set_blocking(self._from_helper, False)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._from_helper)
        loop.add_reader(self._from_helper, self._on_answer)
        self._loop = loop

    def _flush(self) -> None:
        self._flush_scheduled = False
        group, self._pending = self._pending, []
        try:
            if self._failed is not None:
                raise LogFailedError(f"the webhook log failed earlier ({self._failed}); restart the receiver")
            results, self._sync_path = self._write_batch([item for request in group for item in request.items])
        except BaseException as exc:
            for request in group:
                _settle(request.future, exc)
            return
        offset = 0
        for request in group:
            self._written.append((request, results[offset : offset + len(request.items)]))
            offset += len(request.items)
        if len(self._in_flight) < MAX_SYNCS_IN_FLIGHT:
            self._request_sync()

    def _request_sync(self) -> None:
        self._in_flight.append(self._written)
        self._sync_started.append(time.perf_counter())
        self._written = []
        try:
            # A few short lines at most in the pipe: written whole, without blocking.
            os.write(self._to_helper, self._sync_path.encode() + b"\n")
        except Exception as exc:  # A broken pipe: the helper died. Nothing waiting may be left unanswered.
            self._fail(LogFailedError(f"the fsync helper process is gone ({exc}); restart the receiver"))

    def _on_answer(self) -> None:
        try:
            data = os.read(self._from_helper, 4096)
        except BlockingIOError:
            return
        if not data:
            if self._loop is not None:
                self._loop.remove_reader(self._from_helper)
            self._fail(LogFailedError("the fsync helper process exited; restart the receiver"))
            return
        self._answers += data
        while b"\n" in self._answers and self._in_flight:  # After a failure nothing is in flight any more.
            answer, _, self._answers = self._answers.partition(b"\n")
            synced = self._in_flight.popleft()
            self.sync_seconds.observe(time.perf_counter() - self._sync_started.popleft())
            if answer == b"ok":
                for request, flags in synced:
                    _settle(request.future, flags)
            else:
                error = LogFailedError(answer.removeprefix(b"error ").decode(errors="replace"))
                for request, _ in synced:
                    _settle(request.future, error)
                self._fail(error)
        if self._written and len(self._in_flight) < MAX_SYNCS_IN_FLIGHT and self._failed is None:
            self._request_sync()

    def _fail(self, error: BaseException) -> None:
        """What is on disk is unknown now: answer everything waiting with ``error`` and acknowledge nothing more."""
        self._failed = self._failed or error
        waiting = [item for batch in self._in_flight for item in batch] + self._written
        self._in_flight.clear()
        self._sync_started.clear()
        self._written = []
        for request, _ in waiting:
            _settle(request.future, error)

    def close(self) -> None:
        """Stop the helper; requests still waiting are answered with an error (never acknowledged)."""
        self._closed = True
        helper, self._helper = self._helper, None
        waiting = [request for batch in self._in_flight for request, _ in batch]
        waiting += [request for request, _ in self._written] + self._pending
        self._in_flight.clear()
        self._sync_started.clear()
        self._written, self._pending = [], []
        loop = self._loop
        if waiting and loop is not None and not loop.is_closed():
            error = LogClosedError("the webhook log closed before the event was durable")

            def answer_waiting() -> None:
                for request in waiting:
                    _settle(request.future, error)

            loop.call_soon_threadsafe(answer_waiting)
        if helper is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # The loop is not ours to touch from this thread.
                loop.remove_reader(self._from_helper)
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.communicate(timeout=10)  # Closes its stdin: it finishes the sync in flight and exits.
        if helper.poll() is None:
            helper.kill()
            helper.communicate()
