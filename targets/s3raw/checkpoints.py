"""Durability bookkeeping: batches are written on a background thread, and a STATE is released only when every
record that arrived before it is durably in the raw zone or the DLQ.

Every buffered item (a record bound for raw or for the DLQ) gets an input position. A STATE that arrived when the
next position was ``p`` covers positions ``< p``; it is safe once no buffer and no unfinished write holds a position
``< p``. Only the newest safe STATE is emitted (Singer states are cumulative).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)


class BackgroundWriter:
    """Runs write jobs one at a time, in submission order, on one thread; at most ``max_pending`` in flight.

    Compression (zlib releases the GIL) and uploads overlap with parsing the next records. A failed job re-raises
    its error in the caller's thread at the next ``reap``/``wait_all``, before any later STATE can be released.
    """

    def __init__(self, max_pending: int = 2, on_done: Callable[[], None] | None = None) -> None:
        self.max_pending = max_pending
        self.on_done = on_done  # Called on the writer thread after each job, e.g. to release STATE messages.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="target-s3raw-writer")
        self._pending: deque[tuple[int, Future[Any]]] = deque()
        self._lock = threading.Lock()  # The writer thread reaps too (through on_done).

    def wait_for_capacity(self) -> None:
        """Block until another job may be queued. Call it holding no lock the ``on_done`` callback takes."""
        while True:
            with self._lock:
                if len(self._pending) < self.max_pending:
                    return
                oldest = self._pending[0][1]
            oldest.result()
            self._forget(oldest)

    def submit(self, first_position: int, job: Callable[[], Any]) -> None:
        """Queue ``job``, which makes durable items from ``first_position`` on (never blocks).

        Only one thread submits: after ``wait_for_capacity`` there is room, as the writer thread only removes jobs.
        """
        with self._lock:
            future = self._executor.submit(job)
            self._pending.append((first_position, future))
        if self.on_done is not None:
            future.add_done_callback(lambda _: self.on_done() if self.on_done else None)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            if self._pending and self._pending[0][1] is future:
                self._pending.popleft()

    def reap(self) -> None:
        """Forget finished jobs; a failed one raises (every time: it stays, so no later STATE passes it)."""
        with self._lock:
            while self._pending and self._pending[0][1].done():
                error = self._pending[0][1].exception()
                if error is not None:
                    raise error
                self._pending.popleft()

    def wait_all(self) -> None:
        """Block until every queued job is durable (raising the first failure)."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                oldest = self._pending[0][1]
            oldest.result()
            self._forget(oldest)

    def oldest_pending_position(self) -> int | None:
        """The lowest input position still being written (or failed to be), or None."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return None
        return min(position for position, _ in pending)

    def close(self) -> None:
        """Stop the thread once queued jobs are done."""
        self._executor.shutdown(wait=True)


class StateCheckpoints:
    """STATE messages waiting for the records before them to become durable."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        self._waiting: deque[tuple[int, dict[str, Any]]] = deque()
        self.last_emitted: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, position: int, value: dict[str, Any]) -> None:
        """A STATE that arrived when ``position`` was the next input position."""
        self._waiting.append((position, value))

    def release(self, safe_before: int) -> None:
        """Emit the newest waiting STATE whose records are all durable (every position ``< safe_before`` is)."""
        newest: dict[str, Any] | None = None
        while self._waiting and self._waiting[0][0] <= safe_before:
            newest = self._waiting.popleft()[1]
        if newest is not None and newest != self.last_emitted:
            self._emit(newest)
            self.last_emitted = newest
