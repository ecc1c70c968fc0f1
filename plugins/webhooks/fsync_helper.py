"""The webhook log's fsync helper: a small process that makes segment files durable when the receiver asks.

The receiver's event loop writes each group of events to the segment file itself, then sends the file's path here;
this process calls ``fdatasync`` (which flushes every write to the file, whichever descriptor made it) and answers.
The answer arrives on the loop as a readable pipe, so the loop never blocks on the disk while a group syncs, and no
second thread of the receiver competes for the GIL: a sync thread waited up to the interpreter's switch interval
(5 ms) for the GIL before it could report a finished sync on a busy loop.

Protocol: one request line on stdin, the path of the file to sync; one answer line on stdout per request, in order,
``ok`` or ``error <message>``. Every request that has arrived when a sync starts is answered by that one sync (the
writes it stands for were made before), so requests that queue while the disk is busy share it. The receiver keeps
only a few requests unanswered, so neither pipe fills. The process exits when stdin closes, which is also what
happens when the receiver dies; signals sent to the whole process group are ignored. Standard library only, started
with ``python -I``: it must not import the receiver's packages.
"""

from __future__ import annotations

import os
import signal
import sys


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Syncer:
    """fdatasync by path, keeping the newest file open (an older segment was synced when it was sealed)."""

    def __init__(self) -> None:
        self._path: bytes | None = None
        self._fd = -1

    def sync(self, path: bytes) -> bytes:
        """``ok``, or ``error <message>``."""
        try:
            if path != self._path:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd, self._path = -1, None
                try:
                    self._fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:  # Compaction removed it: only sealed (already synced) segments go.
                    return b"ok"
                self._path = path
            os.fdatasync(self._fd)
            return b"ok"
        except OSError as exc:
            return f"error fdatasync of {path.decode(errors='replace')} failed: {exc}".encode()


def serve(requests: int, answers: int) -> None:
    """Answer sync requests from ``requests`` on ``answers`` until ``requests`` reaches end of file.

    Every request that has arrived when a sync starts is answered by it: the writes they stand for were made before.
    """
    syncer = _Syncer()
    pending = b""
    while chunk := os.read(requests, 65536):
        *paths, pending = (pending + chunk).split(b"\n")
        outcomes = {path: syncer.sync(path) for path in dict.fromkeys(paths)}
        if paths:
            _write_all(answers, b"".join(outcomes[path] + b"\n" for path in paths))


if __name__ == "__main__":
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the receiver may still need syncs while
    # it shuts down, and this process ends with it anyway (its stdin closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.stdin.fileno(), sys.stdout.fileno())
    except (BrokenPipeError, KeyboardInterrupt):  # The receiver is gone: nobody is left to answer.
        sys.exit(0)
