"""Runs a provider sandbox (an ASGI app emulating a SaaS API) on loopback, in a thread or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp


class SandboxServer:
    """An ASGI app served by uvicorn in a background thread; ``url`` is its base URL once started.

    Use as a context manager: ``with SandboxServer(app) as server: requests.get(server.url + "/v1/customers")``.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any) -> None:
        self.app = app
        self.uvicorn_options = uvicorn_options  # e.g. lifespan="on", proxy_headers=False (the webhook receiver)
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False}
        import uvicorn  # Imported on use: the CLI starts faster without it.

        config = uvicorn.Config(self.app, **{**options, **self.uvicorn_options})
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"sandbox server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; port 0 lets the kernel pick a free one (``getsockname``).

    The server is handed this socket, so the port is bound once: no window in which another process could take it,
    and clients may connect as soon as it is returned (the kernel queues them until the server accepts).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def socket_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (the real port, also when it was bound with port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def serve_forever(app: ASGIApp, host: str, port: int, announce: Callable[[str], None], **uvicorn_options: Any) -> None:
    """Serve ``app`` in the foreground until interrupted (``cdp sandbox serve``, ``cdp webhooks serve``).

    ``announce`` gets the URL once the socket listens, with the real port when ``port`` is 0: a test or a script
    starts the server with ``--port 0`` and reads the URL from its output instead of guessing a free port.
    """
    import uvicorn

    sock = listening_socket(host, port)
    config = uvicorn.Config(app, **{"log_level": "info", "lifespan": "off", **uvicorn_options})
    announce(socket_url(sock))
    uvicorn.Server(config).run(sockets=[sock])
