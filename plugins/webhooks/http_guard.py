"""Connection-level limits for the receiver's HTTP server: header size, header read time, number of connections.

uvicorn's default parser (httptools) has no header size limit and no time limit on reading a request's headers, and
``limit_concurrency`` only answers 503 after a request's headers have arrived. So the receiver runs uvicorn with
:func:`guarded_protocol`, a subclass of uvicorn's httptools protocol that:

- answers **431** and closes the connection once a request's line and headers exceed ``max_header_bytes`` (counted as
  they are parsed: an oversized header is never kept whole);
- answers **408** and closes the connection when a request's headers have not all arrived ``header_timeout_seconds``
  after its first byte (or after the connection opened);
- answers **503** and closes a new connection when ``max_connections`` are already open.

The body's read time is limited by the receiver itself (``body_timeout_seconds``, 408), as it reads the body; the
scope's ``cdp.body_received`` extension tells it when a request's body has already arrived whole (nothing to wait
for, so no timeout to set up).

Two things here only make the receiver cheaper per request (measured with py-spy on ``benchmarks/webhook_load.py
--sustained``; docs/webhooks.md, "Performance"): a response's head and body leave in one write (uvicorn writes them
separately, and uvloop sends each write at once: two send calls and two TCP segments per response), and the header
timeout is one timer per connection that is moved lazily, not a timer made and cancelled for every request.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_CONNECTIONS = 1000

# The scope extension through which the receiver learns whether a request's whole body has arrived:
# ``scope["extensions"][BODY_RECEIVED_EXTENSION]["check"]()`` is True once nothing of it is still on the way.
BODY_RECEIVED_EXTENSION = "cdp.body_received"

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits :func:`guarded_protocol` enforces; each has a ``cdp webhooks serve`` option."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS


class _ResponseWriter:
    """What a response cycle writes to instead of the transport: the writes of one event-loop step leave in one write.

    uvicorn writes a response's status line and headers, then its body; uvloop sends every write at once, so each
    response cost two send calls and two TCP segments (and the client a wake-up for each). Holding the writes until
    the loop's next round (``call_soon``) sends the whole response in one. In py-spy profiles of the sustained
    benchmark these sends were a quarter of the receiver's event-loop time.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        if not self._transport.is_closing():
            self._transport.write(b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class _GuardedProtocol(HttpToolsProtocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        # Bytes received while a request's line and headers are still being read. httptools keeps a header's name
        # and value until the header is complete before it calls on_header, so one endless header line would be
        # held (and re-concatenated) whole: the raw bytes are counted as they arrive instead.
        self._reading_headers = True
        self._raw_header_bytes = 0
        self._refused = False
        # When the headers being read are due (infinity while none are): one timer per connection looks at it, and
        # moves itself to the deadline when that is later, instead of a timer made and cancelled for every request.
        self._header_deadline = math.inf
        self._header_timer: asyncio.TimerHandle | None = None
        self._receiving_message = False  # Between a request's first byte and the end of its body.
        # ASGI scope extensions: dicts of anything (uvicorn's scope type says dict[object, object]).
        self._extensions: dict[str, dict[object, object]] = {BODY_RECEIVED_EXTENSION: {"check": self.body_received}}
        self._writer: _ResponseWriter | None = None

    # -- the guard ---------------------------------------------------------------------------------------------
    def body_received(self) -> bool:
        """Whether no request on this connection is still arriving (so the body of every begun one is here)."""
        return not self._receiving_message

    def _headers_due(self) -> None:
        """Start the header clock for a request (or the connection) unless it is already running."""
        if self._header_deadline == math.inf:
            self._header_deadline = self.loop.time() + self.limits.header_timeout_seconds
            if self._header_timer is None:
                self._header_timer = self.loop.call_at(self._header_deadline, self._check_header_deadline)

    def _check_header_deadline(self) -> None:
        self._header_timer = None
        if self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._header_deadline <= now:
            self._refuse(408, "request headers did not arrive in time")
            return
        # Headers due later (a request that began after the timer was set), or none being read: look again then.
        wake = min(self._header_deadline, now + self.limits.header_timeout_seconds)
        self._header_timer = self.loop.call_at(wake, self._check_header_deadline)

    def _cancel_header_timer(self) -> None:
        self._header_deadline = math.inf
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a one-line JSON error and close the connection; ignore whatever else it sends."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel_header_timer()
        if self._writer is not None:
            self._writer.flush()  # A response written just before goes out first.
        body = b'{"error":"' + message.encode() + b'"}'
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()

    def _count_header_bytes(self, size: int) -> bool:
        """Add ``size`` to this request's header bytes; False (and the request refused) once over the limit."""
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers are over {self.limits.max_header_bytes} bytes")
            return False
        return not self._refused

    # -- uvicorn's protocol, guarded ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = _ResponseWriter(transport, self.loop)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many connections; retry later")
            return
        self._headers_due()  # A connection that never sends a request is closed too.

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        limit = self.limits.max_header_bytes
        while data and not self._refused and not self.transport.is_closing():
            if not self._reading_headers:
                super().data_received(data)
                return
            # Feed no more than the rest of the header budget (plus one byte, to see it exceeded), so the parser
            # never holds more than the limit of an unfinished header.
            budget = max(limit + 1 - self._raw_header_bytes, 1)
            piece, data = data[:budget], data[budget:]
            self._raw_header_bytes += len(piece)
            super().data_received(piece)
            if self._reading_headers and self._raw_header_bytes > limit:
                self._refuse(431, f"request headers are over {limit} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions
        self._header_bytes = 0
        self._receiving_message = True
        self._headers_due()  # From the request's first byte (or still from the connection's opening).

    def on_url(self, url: bytes) -> None:
        if self._count_header_bytes(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_header_bytes(len(name) + len(value) + 4):  # ": " and CRLF count as the client sent them.
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_deadline = math.inf  # The timer, if it fires before the next request, only moves itself on.
        self._reading_headers = False
        if not self._refused:
            super().on_headers_complete()
            if self.cycle is not None:
                self.cycle.transport = self._writer  # type: ignore[assignment]  # Writes, closes, is_closing only.

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_headers = True  # What follows on this connection is the next request's line and headers.
        self._raw_header_bytes = 0
        self._receiving_message = False
        if not self._refused:
            super().on_message_complete()

    # uvicorn writes to and closes the transport itself here: a response still held must leave first.
    def send_400_response(self, msg: str) -> None:
        if self._writer is not None:
            self._writer.flush()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        super().shutdown()


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (_GuardedProtocol,), {"limits": limits})
