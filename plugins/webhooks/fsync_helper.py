"""The webhook log's fsync helper: a small process that makes segment files durable when the receiver asks.

The receiver's event loop writes each group of events to the segment file itself, then sends the file's path here;
this process calls ``fdatasync`` (which flushes every write to the file, whichever descriptor made it) and answers.
The answer arrives on the loop as a readable pipe, so the loop never blocks on the disk while a group syncs, and no
second thread of the receiver competes for the GIL: a sync thread waited up to the interpreter's switch interval
(5 ms) for the GIL before it could report a finished sync on a busy loop.

Protocol: one request line on stdin, the path of the file to sync; one answer line on stdout per request, in order,
``ok`` or ``error <message>``. Requests that arrive together are answered by one sync (the writes they stand for were
made before it starts). A request that arrives while syncs are running starts its own sync at once, on a thread of
its own, instead of waiting for them to end: the kernel then chains the flushes itself, while a sync that started
only after the previous one returned waited for this process to be scheduled in between, which on a busy machine
took as long as the flush. Measured on the shared 2-CPU VM (a write every 0.5 ms, then a sync that starts after it):
write to durable 2.0 ms mean and 13-17 ms p99 with one sync at a time; 1.1 ms and 9.3-9.5 ms with up to four at once.
Each thread syncs through a descriptor of its own (all opened together): a writeback error is reported once per
open file description, so two syncs sharing one could not both learn of it. The receiver keeps at most
``MAX_PARALLEL_SYNCS`` requests unanswered, so neither pipe fills and a thread is free for each. The process exits
when stdin closes (after answering what it was asked), which is also what happens when the receiver dies; signals
sent to the whole process group are ignored. Standard library only, started with ``python -I``: it must not import
the receiver's packages.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import signal
import sys
import threading

# At most this many syncs at once: the receiver's MAX_SYNCS_IN_FLIGHT (plugins/webhooks/group_commit.py).
MAX_PARALLEL_SYNCS = 4


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _File:
    """The descriptors of one file, opened together, one per sync that may run at once."""

    def __init__(self, path: bytes, count: int) -> None:
        self.path = path
        self.free: list[int] = []
        try:
            for _ in range(count):
                self.free.append(os.open(path, os.O_RDONLY))
        except BaseException:
            self.close_free()
            raise
        self.retired = False

    def close_free(self) -> None:
        for fd in self.free:
            os.close(fd)
        self.free.clear()


class _Syncer:
    """fdatasync by path, from several threads at once, keeping the newest file open (an older segment was synced
    when it was sealed)."""

    def __init__(self, parallel: int) -> None:
        self._parallel = parallel
        self._lock = threading.Lock()
        self._file: _File | None = None

    def _borrow(self, path: bytes) -> tuple[_File, int] | None:
        with self._lock:
            if self._file is None or self._file.path != path:
                if self._file is not None:  # Descriptors in use are closed when they come back.
                    self._file.retired = True
                    self._file.close_free()
                    self._file = None
                try:
                    self._file = _File(path, self._parallel)
                except FileNotFoundError:  # Compaction removed it: only sealed (already synced) segments go.
                    return None
            file = self._file
            return file, file.free.pop() if file.free else os.open(path, os.O_RDONLY)

    def _give_back(self, file: _File, fd: int) -> None:
        with self._lock:
            if file.retired or len(file.free) >= self._parallel:
                os.close(fd)
            else:
                file.free.append(fd)

    def sync(self, path: bytes) -> bytes:
        """``ok``, or ``error <message>``."""
        try:
            borrowed = self._borrow(path)
            if borrowed is None:
                return b"ok"
            file, fd = borrowed
            try:
                os.fdatasync(fd)
            finally:
                self._give_back(file, fd)
            return b"ok"
        except OSError as exc:
            return f"error fdatasync of {path.decode(errors='replace')} failed: {exc}".encode()


def _answer_in_order(syncs: queue.SimpleQueue[list[concurrent.futures.Future[bytes]] | None], answers: int) -> None:
    """Write each batch's answers once its syncs are done, batch after batch, in the order the requests came."""
    while (batch := syncs.get()) is not None:
        lines = b"".join(sync.result() + b"\n" for sync in batch)
        with contextlib.suppress(BrokenPipeError):  # The receiver is gone: nobody is left to answer.
            _write_all(answers, lines)


def serve(requests: int, answers: int, parallel: int = MAX_PARALLEL_SYNCS) -> None:
    """Answer sync requests from ``requests`` on ``answers`` until ``requests`` reaches end of file.

    Requests read together share one sync per file; each batch's syncs start at once, even while earlier ones run.
    """
    syncer = _Syncer(parallel)
    batches: queue.SimpleQueue[list[concurrent.futures.Future[bytes]] | None] = queue.SimpleQueue()
    answerer = threading.Thread(target=_answer_in_order, args=(batches, answers), name="answers")
    answerer.start()
    with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="fdatasync") as pool:
        try:
            pending = b""
            while chunk := os.read(requests, 65536):
                *paths, pending = (pending + chunk).split(b"\n")
                if paths:
                    syncs = {path: pool.submit(syncer.sync, path) for path in dict.fromkeys(paths)}
                    batches.put([syncs[path] for path in paths])
        finally:
            batches.put(None)
            answerer.join()


if __name__ == "__main__":
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the receiver may still need syncs while
    # it shuts down, and this process ends with it anyway (its stdin closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.stdin.fileno(), sys.stdout.fileno())
    except (BrokenPipeError, KeyboardInterrupt):  # The receiver is gone: nobody is left to answer.
        sys.exit(0)
