"""Runs a provider sandbox (an ASGI app emulating a SaaS API) on loopback, in a thread or in the foreground, and the
:class:`FaultPlan` every sandbox reads its injected faults from."""

from __future__ import annotations

import dataclasses
import enum
import json
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from plugins.core.errors import CdpError

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp


class FaultPlanError(CdpError, ValueError):
    """A fault that does not exist, that a sandbox does not offer, or a value of the wrong kind."""


class Fault(enum.StrEnum):
    """What a sandbox does to one request, whichever provider it emulates (each answers in its provider's words)."""

    RATE_LIMIT = "rate_limit"  # the provider's throttle answer (429, 403 REQUEST_LIMIT_EXCEEDED, THROTTLED)
    OUTAGE = "outage"  # 503, as during an incident
    SERVER_ERROR = "server_error"  # the provider's 5xx (server_error_status, else its usual one)
    SLOW = "slow"  # the answer comes slow_seconds late (client timeouts)
    MALFORMED = "malformed"  # a 200 whose JSON body is cut off
    FAILING = "failing"  # a resource that always answers 5xx
    THROTTLED = "throttled"  # a resource that is always throttled
    DENIED = "denied"  # a resource the credentials may not read (missing scope or permission)


#: The counted faults, in the order a request is checked for them: one fault per request.
COUNTED_FAULTS = (Fault.RATE_LIMIT, Fault.OUTAGE, Fault.SERVER_ERROR, Fault.SLOW, Fault.MALFORMED)


@dataclass(frozen=True)
class FaultPlan:
    """The faults a sandbox injects: one vocabulary for every sandbox, read the same way by each.

    Counted faults hit requests by their 1-based number (each sandbox says what it counts: all API requests, or per
    path): ``X_every`` N with ``X_burst`` K makes the last K of every N requests fail (K = 1: every Nth), for X in
    rate_limit, server_error, slow and malformed; ``outage_after`` N with ``outage_requests`` M makes requests
    N+1..N+M answer 503. ``only`` limits counted faults to some resources. Resource faults hit every request to a
    resource (a Stripe path, a Shopify root field, a Salesforce sObject): ``failing``, ``throttled``, ``denied``.
    ``cdp sandbox serve NAME --fault NAME=VALUE`` builds one with :meth:`parse`.
    """

    rate_limit_every: int = 0
    rate_limit_burst: int = 1
    server_error_every: int = 0
    server_error_burst: int = 1
    server_error_status: int = 0  # 0: the provider's usual status
    slow_every: int = 0
    slow_burst: int = 1
    slow_seconds: float = 2.0
    malformed_every: int = 0
    malformed_burst: int = 1
    outage_after: int = 0
    outage_requests: int = 0
    only: tuple[str, ...] = ()
    failing: tuple[str, ...] = ()
    throttled: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    session_uses: int = 0  # an access token works for this many requests, then answers 401 (0: for ever)
    bulk_polls_in_progress: int = 1  # polls that report a bulk job or operation still running before it completes

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(spec.default, tuple):
                if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                    raise FaultPlanError(f"fault '{spec.name}' takes a list of names, not {value!r}")
                object.__setattr__(self, spec.name, tuple(value))
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise FaultPlanError(f"fault '{spec.name}' takes a number of 0 or more, not {value!r}")
            elif isinstance(spec.default, int) and value != int(value):
                raise FaultPlanError(f"fault '{spec.name}' takes a whole number, not {value!r}")
        for name in ("rate_limit", "server_error", "slow", "malformed"):
            every, burst = getattr(self, f"{name}_every"), getattr(self, f"{name}_burst")
            if every and not 1 <= burst <= every:
                raise FaultPlanError(f"fault '{name}_burst' must be 1..{name}_every ({every}), not {burst}")

    @classmethod
    def names(cls) -> list[str]:
        return [spec.name for spec in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FaultPlan:
        """A plan from ``{name: value}``; an unknown name is a :class:`FaultPlanError` listing the known ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise FaultPlanError(f"unknown fault '{unknown[0]}'; faults: {', '.join(cls.names())}")
        return cls(**dict(values))

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> FaultPlan:
        """A plan from ``NAME=VALUE`` strings (``--fault``): numbers, or comma-separated names for the lists."""
        defaults = {spec.name: spec.default for spec in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            if not sep or not name:
                raise FaultPlanError(f"'{pair}' is not NAME=VALUE, e.g. rate_limit_every=5")
            if name not in defaults:
                raise FaultPlanError(f"unknown fault '{name}'; faults: {', '.join(defaults)}")
            default = defaults[name]
            if isinstance(default, tuple):
                values[name] = tuple(json.loads(raw)) if raw.startswith("[") else tuple(filter(None, raw.split(",")))
                continue
            try:
                values[name] = int(raw) if isinstance(default, int) else float(raw)
            except ValueError:
                kind = "a whole number" if isinstance(default, int) else "a number"
                raise FaultPlanError(f"fault '{name}' takes {kind}, not '{raw}'") from None
        return cls(**values)

    def active(self) -> list[str]:
        """The names set to something other than their default."""
        return [spec.name for spec in dataclasses.fields(self) if getattr(self, spec.name) != spec.default]

    def require_only(self, sandbox: str, supported: Iterable[str]) -> None:
        """Refuse a plan that sets a fault this sandbox does not inject (it would silently do nothing)."""
        offered = list(supported)
        unsupported = [name for name in self.active() if name not in offered]
        if unsupported:
            raise FaultPlanError(
                f"the {sandbox} sandbox has no fault '{unsupported[0]}'; its faults: {', '.join(offered)}"
            )

    def hits(self, fault: Fault, count: int) -> bool:
        """Whether request number ``count`` (1-based) gets the counted ``fault``."""
        if fault is Fault.OUTAGE:
            return self.outage_after < count <= self.outage_after + self.outage_requests
        every = int(getattr(self, f"{fault.value}_every"))
        burst = int(getattr(self, f"{fault.value}_burst"))
        return every > 0 and (count - 1) % every >= every - burst

    def counted_fault(self, count: int, resource: str | None = None) -> Fault | None:
        """The counted fault request number ``count`` (to ``resource``) gets, if any: at most one per request."""
        if self.only and resource not in self.only:
            return None
        return next((fault for fault in COUNTED_FAULTS if self.hits(fault, count)), None)

    def resource_fault(self, resources: Iterable[str]) -> Fault | None:
        """The fault a request touching ``resources`` always gets (``failing``, ``throttled``, ``denied``), if any."""
        touched = set(resources)
        for fault, names in (
            (Fault.FAILING, self.failing),
            (Fault.THROTTLED, self.throttled),
            (Fault.DENIED, self.denied),
        ):
            if touched & set(names):
                return fault
        return None

    def denied_resources(self, resources: Iterable[str]) -> list[str]:
        """Which of ``resources`` the credentials may not read, sorted."""
        return sorted(set(resources) & set(self.denied))


#: The settings of the counted faults (every sandbox that counts requests offers them all).
COUNTED_FAULT_SETTINGS = (
    *(f"{fault.value}_{part}" for fault in COUNTED_FAULTS if fault is not Fault.OUTAGE for part in ("every", "burst")),
    "server_error_status",
    "slow_seconds",
    "outage_after",
    "outage_requests",
)


@dataclass(frozen=True)
class SandboxOptions:
    """How a provider sandbox is built: how much synthetic data, from which seed, which credentials it accepts, and
    the faults it injects (:class:`FaultPlan`, one vocabulary for every sandbox; each sandbox refuses the faults it
    does not offer)."""

    records: int = 1000
    seed: int = 42
    credentials: dict[str, str] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)


@dataclass(frozen=True)
class ThrowawayCertificate:
    """A certificate for loopback from a throwaway CA (trustme), in a temporary folder: HTTPS for sandboxes, because
    some official clients (simple-salesforce) speak nothing else. Clients trust ``ca_file`` (``verify=ca_file``)."""

    folder: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, *hosts: str) -> ThrowawayCertificate:
        try:
            import trustme
        except ModuleNotFoundError:
            raise CdpError("--tls needs trustme, a development library: uv pip install -e '.[dev]'") from None
        authority = trustme.CA()
        issued = authority.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
        folder = Path(tempfile.mkdtemp(prefix="cdp-sandbox-tls-"))
        certificate = cls(folder, folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
        authority.cert_pem.write_to_path(str(certificate.ca_file))
        issued.private_key_pem.write_to_path(str(certificate.key_file))
        certificate.cert_file.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return certificate

    def uvicorn_options(self) -> dict[str, str]:
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# A TLS connection idle in a client's pool holds a graceful shutdown until the client closes it (asyncio waits for
# its close_notify): a sandbox gives such connections a second, then stops.
_TLS_SHUTDOWN = {"timeout_graceful_shutdown": 1}


class SandboxServer:
    """An ASGI app served by uvicorn in a background thread; ``url`` is its base URL once started.

    Use as a context manager: ``with SandboxServer(app) as server: requests.get(server.url + "/v1/customers")``.
    With ``tls=True`` it serves HTTPS with a :class:`ThrowawayCertificate`; clients verify with ``server.ca_file``.
    """

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, tls: bool = False, **uvicorn_options: Any
    ) -> None:
        self.app = app
        self.uvicorn_options = uvicorn_options  # e.g. lifespan="on", proxy_headers=False (the webhook receiver)
        self.host = host
        self.port = port
        self.tls = tls
        self.certificate: ThrowawayCertificate | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """The CA certificate a client must trust to reach this server over HTTPS."""
        if self.certificate is None:
            raise RuntimeError("the sandbox server serves no TLS (SandboxServer(..., tls=True)) or has not started")
        return str(self.certificate.ca_file)

    def start(self) -> str:
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False}
        if self.tls:
            self.certificate = ThrowawayCertificate.create(self.host, "localhost")
            options.update(_TLS_SHUTDOWN, **self.certificate.uvicorn_options())
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
        if self.certificate is not None:
            self.certificate.remove()
            self.certificate = None

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


def socket_url(sock: socket.socket, scheme: str = "http") -> str:
    """``http://host:port`` of a bound socket (the real port, also when it was bound with port 0)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{scheme}://{host}:{port}"


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def serve_forever(
    app: ASGIApp,
    host: str,
    port: int,
    announce: Callable[[str], None],
    certificate: ThrowawayCertificate | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` in the foreground until interrupted (``cdp sandbox serve``, ``cdp webhooks serve``).

    ``announce`` gets the URL once the socket listens, with the real port when ``port`` is 0: a test or a script
    starts the server with ``--port 0`` and reads the URL from its output instead of guessing a free port. With
    ``certificate`` the server speaks HTTPS, and the certificate's files are removed when it stops.
    """
    import uvicorn

    sock = listening_socket(host, port)
    options: dict[str, Any] = {"log_level": "info", "lifespan": "off", **uvicorn_options}
    if certificate is not None:
        options.update(_TLS_SHUTDOWN, **certificate.uvicorn_options())
    config = uvicorn.Config(app, **options)
    announce(socket_url(sock, "https" if certificate is not None else "http"))
    # uvicorn re-raises the SIGTERM it caught once it has stopped; as SystemExit, the certificate is still removed.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if certificate is not None:
            certificate.remove()
