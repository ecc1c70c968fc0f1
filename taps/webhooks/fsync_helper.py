"""The webhook log's fsync helper: a small process that makes segment files durable when the receiver asks.

The receiver's event loop writes each group of events to the segment file itself, then sends the file's path here;
this process calls ``fdatasync`` (which flushes every write to the file, whichever descriptor made it) and answers.
The answer arrives on the loop as a readable pipe, so the loop never blocks on the disk while a group syncs, and no
second thread of the receiver competes for the GIL: a sync thread waited up to the interpreter's switch interval
(5 ms) for the GIL before it could report a finished sync on a busy loop.

Protocol: one request line on stdin, the path of the file to sync; one answer line on stdout, ``ok`` or
``error <message>``. The receiver sends the next request only after the answer. The process exits when stdin closes,
which is also what happens when the receiver dies; signals sent to the whole process group are ignored. Standard
library only, started with ``python -I``: it must not import the receiver's packages.
"""

from __future__ import annotations

import os
import signal
import sys


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(requests: int, answers: int) -> None:
    """Answer sync requests from ``requests`` on ``answers`` until ``requests`` reaches end of file."""
    reader = os.fdopen(requests, "rb")  # Buffered: readline returns as soon as a whole line has arrived.
    lines = iter(reader.readline, b"")
    open_path: bytes | None = None
    open_fd = -1
    for line in lines:
        path = line.rstrip(b"\n")
        try:
            if path != open_path:
                # Only the newest segment is ever synced: an older one was synced when it was sealed.
                if open_fd >= 0:
                    os.close(open_fd)
                    open_fd, open_path = -1, None
                try:
                    open_fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    # Compaction removed it: only sealed (already synced) segments are ever removed.
                    _write_all(answers, b"ok\n")
                    continue
                open_path = path
            os.fdatasync(open_fd)
            answer = b"ok\n"
        except OSError as exc:
            answer = f"error fdatasync of {path.decode(errors='replace')} failed: {exc}\n".encode()
        _write_all(answers, answer)


if __name__ == "__main__":
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the receiver may still need syncs while
    # it shuts down, and this process ends with it anyway (its stdin closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.stdin.fileno(), sys.stdout.fileno())
    except (BrokenPipeError, KeyboardInterrupt):  # The receiver is gone: nobody is left to answer.
        sys.exit(0)
