"""The SMTP sandbox (``cdp sandbox serve email``): an aiosmtpd relay that checks what a bulk sender must get right.

Each message's DKIM signature is verified with dkimpy against the configured public keys (an in-memory DNS zone: no
real DNS query is ever made), and whether its ``h=`` covers ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` is
recorded; a message without a passing signature is refused ``550 5.7.26`` as Gmail refuses unauthenticated bulk mail.
Messages are kept in memory (:attr:`SmtpSandbox.messages`) and in a mailbox folder (``NNNNNN.eml`` and one JSON line
each in ``messages.jsonl``). STARTTLS with a throwaway certificate (trustme) and AUTH PLAIN/LOGIN when credentials
are given; the connections are counted.

Faults (``SandboxOptions.faults``, the FaultPlan vocabulary, counted per message at ``MAIL FROM``):
``rate_limit_every``/``_burst`` answer ``451 4.7.1`` (sending rate exceeded); ``server_error_every``/``_burst``
answer ``server_error_status`` (451 by default; 421 also closes the session, as RFC 5321 says); ``outage_after`` N
with ``outage_requests`` M answer ``421 4.3.2`` and close for messages N+1..N+M; ``session_uses`` N drops each
connection without an answer when it starts its (N+1)th message; ``failing`` recipients are refused ``550 5.1.1``
(no such mailbox) and ``throttled`` ones ``450 4.2.1`` (receiving mail too quickly).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from plugins.connectors.sandbox import (
    Fault,
    FaultPlan,
    SandboxOptions,
    ThrowawayCertificate,
    listening_socket,
)
from plugins.core.events import log_event

logger = logging.getLogger("cdp.activators.email.sandbox")

SUPPORTED_FAULTS = (
    "rate_limit_every",
    "rate_limit_burst",
    "server_error_every",
    "server_error_burst",
    "server_error_status",
    "outage_after",
    "outage_requests",
    "session_uses",
    "failing",
    "throttled",
)
ONE_CLICK_HEADERS = ("list-unsubscribe", "list-unsubscribe-post")
DEFAULT_DKIM_SELECTOR = "sandbox"
DEFAULT_DKIM_DOMAIN = "example.com"

DnsLookup = Callable[..., bytes | None]


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the sandbox accepted, with what it found."""

    number: int
    mail_from: str
    recipients: tuple[str, ...]
    message_id: str
    dkim: str  # pass, fail or none (no signature)
    signed_headers: tuple[str, ...]  # lower case, as h= lists them
    list_unsubscribe_signed: bool  # both List-Unsubscribe headers are present and covered by the signature
    tls: bool
    authenticated_as: str | None
    data: bytes

    def summary(self) -> dict[str, Any]:
        values = asdict(self)
        del values["data"]
        return values


def dkim_key_pair() -> tuple[bytes, str]:
    """A fresh 2048-bit RSA key: the private key as PEM, and the DKIM TXT record of its public key (RFC 6376 3.6.1)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public_der).decode()}"


def dns_zone(records: Mapping[str, str]) -> DnsLookup:
    """A dkimpy ``dnsfunc`` answering from ``records`` (``selector._domainkey.domain`` -> TXT), never from DNS."""
    zone = {name.rstrip(".").lower(): value for name, value in records.items()}

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        value = zone.get(key)
        return value.encode() if value is not None else None

    return lookup


def verify_dkim(data: bytes, lookup: DnsLookup) -> tuple[str, tuple[str, ...]]:
    """``(verdict, signed header names)`` of a message's first DKIM signature: pass, fail or none."""
    import dkim

    if b"dkim-signature:" not in data.lower().split(b"\r\n\r\n", 1)[0]:
        return "none", ()
    verifier = dkim.DKIM(data, minkey=1024)
    try:
        passed = verifier.verify(dnsfunc=lookup)
    except dkim.DKIMException:
        passed = False
    names = tuple(
        dict.fromkeys(name.decode("ascii", "replace").lower() for name, _value in verifier.signed_headers or [])
    )
    return ("pass" if passed else "fail"), names


class _Relay:
    """The aiosmtpd handler: faults, DKIM, the record of messages."""

    def __init__(self, sandbox: SmtpSandbox) -> None:
        self.sandbox = sandbox

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not getattr(server, "cdp_counted", False):  # EHLO comes again after STARTTLS, on the same connection
            server.cdp_counted = True  # type: ignore[attr-defined]
            self.sandbox.count_connection()
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        faults = self.sandbox.faults
        in_session = getattr(server, "cdp_messages", 0)
        if faults.session_uses and in_session >= faults.session_uses:
            transport = server.transport
            assert isinstance(transport, asyncio.Transport)
            transport.abort()  # A dropped connection: no answer at all.
            return "421 4.4.2 connection dropped"
        server.cdp_messages = in_session + 1  # type: ignore[attr-defined]
        count = self.sandbox.next_attempt()
        fault = faults.counted_fault(count)
        if fault is Fault.OUTAGE:
            return self._closing(server, "421 4.3.2 Service not available, closing transmission channel")
        if fault is Fault.RATE_LIMIT:
            return "451 4.7.1 Sending rate exceeded, try again later"
        if fault is Fault.SERVER_ERROR:
            status = faults.server_error_status or 451
            if status == 421:
                return self._closing(server, "421 4.3.0 Temporary system problem, closing transmission channel")
            return f"{status} {'4.3.0 Temporary' if status < 500 else '5.3.0 Permanent'} system problem"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    @staticmethod
    def _closing(server: SMTP, reply: str) -> str:
        transport = server.transport
        assert transport is not None
        server.loop.call_soon(transport.close)  # After the reply is written: a 421 closes the session.
        return reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        faults = self.sandbox.faults
        lowered = address.lower()
        if lowered in {name.lower() for name in faults.failing}:
            return "550 5.1.1 The email account that you tried to reach does not exist"
        if lowered in {name.lower() for name in faults.throttled}:
            return "450 4.2.1 The user you are trying to contact is receiving mail too quickly"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        verdict, signed = verify_dkim(data, self.sandbox.lookup)
        if verdict != "pass" and self.sandbox.require_dkim:
            log_event(logger, "smtp_sandbox_refused", logging.WARNING, dkim=verdict)
            return "550 5.7.26 Unauthenticated email is not accepted: the DKIM signature did not pass"
        headers = message_from_bytes(data, policy=SMTP_POLICY)
        present = all(headers.get(name) is not None for name in ONE_CLICK_HEADERS)
        auth = session.auth_data
        message = self.sandbox.record(
            mail_from=str(envelope.mail_from),
            recipients=tuple(envelope.rcpt_tos),
            message_id=str(headers.get("Message-ID", "")),
            dkim=verdict,
            signed_headers=signed,
            list_unsubscribe_signed=present and verdict == "pass" and all(name in signed for name in ONE_CLICK_HEADERS),
            tls=session.ssl is not None,
            authenticated_as=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            data=data,
        )
        return f"250 2.0.0 OK {message.message_id} queued as {message.number}"


class _Controller(Controller):
    """aiosmtpd's Controller on a socket bound once (port 0 picks a free one, and no other process can take it)."""

    def __init__(self, handler: _Relay, sock: Any, **kwargs: Any) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpSandbox:
    """A local SMTP relay in a background thread; use as a context manager. ``url`` is ``smtp://host:port``.

    ``dns_records`` is the DKIM zone (``selector._domainkey.domain`` -> TXT record); without it the sandbox makes a key
    pair for ``credentials['dkim_selector']`` / ``['dkim_domain']`` (default ``sandbox`` / ``example.com``) and
    leaves the private key in ``mailbox/dkim-private.pem`` for a sender to sign with. ``tls=True`` offers STARTTLS
    (clients trust :attr:`ca_file`) and requires it unless ``require_tls=False``; ``credentials['username']`` and
    ``['password']`` require AUTH (after STARTTLS when it is offered).
    """

    def __init__(
        self,
        options: SandboxOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool = False,
        require_tls: bool = True,
        dns_records: Mapping[str, str] | None = None,
        mailbox: Path | None = None,
        require_dkim: bool = True,
    ) -> None:
        self.options = options or SandboxOptions()
        self.options.faults.require_only("smtp", SUPPORTED_FAULTS)
        self.faults: FaultPlan = self.options.faults
        self.host = host
        self.port = port
        self.tls = tls
        self.require_tls = tls and require_tls
        self.require_dkim = require_dkim
        self._own_mailbox = mailbox is None
        self.mailbox = mailbox or Path(tempfile.mkdtemp(prefix="cdp-smtp-sandbox-"))
        self.mailbox.mkdir(parents=True, exist_ok=True)
        credentials = self.options.credentials
        self.dkim_private_key_path: Path | None = None
        if dns_records is None:
            selector = credentials.get("dkim_selector", DEFAULT_DKIM_SELECTOR)
            domain = credentials.get("dkim_domain", DEFAULT_DKIM_DOMAIN)
            private_pem, record = dkim_key_pair()
            self.dkim_private_key_path = self.mailbox / "dkim-private.pem"
            self.dkim_private_key_path.write_bytes(private_pem)
            self.dkim_private_key_path.chmod(0o600)
            dns_records = {f"{selector}._domainkey.{domain}": record}
        self.dns_records = dict(dns_records)
        self.lookup = dns_zone(self.dns_records)
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        self._attempts = 0
        self._lock = threading.Condition()
        self.certificate: ThrowawayCertificate | None = None
        self._controller: _Controller | None = None

    # -- state, shared with the relay's thread ---------------------------------------------------------------
    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def next_attempt(self) -> int:
        with self._lock:
            self._attempts += 1
            return self._attempts

    def record(self, **fields: Any) -> ReceivedMessage:
        with self._lock:
            message = ReceivedMessage(number=len(self.messages) + 1, **fields)
            self.messages.append(message)
            (self.mailbox / f"{message.number:06d}.eml").write_bytes(message.data)
            with (self.mailbox / "messages.jsonl").open("a") as index:
                index.write(json.dumps(message.summary()) + "\n")
            self._lock.notify_all()
        return message

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """The messages once at least ``count`` have arrived; TimeoutError after ``timeout`` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"the SMTP sandbox got {len(self.messages)} messages, not {count}")
            return list(self.messages)

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        if self.certificate is None:
            raise RuntimeError("the SMTP sandbox serves no STARTTLS (SmtpSandbox(tls=True)) or has not started")
        return str(self.certificate.ca_file)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        credentials = self.options.credentials
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == credentials.get("username")
            and auth_data.password.decode() == credentials.get("password")
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def start(self) -> str:
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        kwargs: dict[str, Any] = {"ready_timeout": 10.0, "server_hostname": "sandbox.smtp.local"}
        if self.tls:
            self.certificate = ThrowawayCertificate.create(self.host, "localhost")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.certificate.cert_file), str(self.certificate.key_file))
            kwargs.update(tls_context=context, require_starttls=self.require_tls)
        if self.options.credentials.get("username"):
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=self.tls)
        self._controller = _Controller(_Relay(self), sock, **kwargs)
        self._controller.start()  # Its start-up probe reads the banner and leaves: no EHLO, not counted.
        return self.url

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self.certificate is not None:
            self.certificate.remove()
            self.certificate = None
        if self._own_mailbox:
            shutil.rmtree(self.mailbox, ignore_errors=True)

    def __enter__(self) -> SmtpSandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def sandbox_server(
    options: SandboxOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    require_tls: bool = False,
    mailbox: Path | None = None,
) -> Iterator[str]:
    """``cdp sandbox serve email``: the sandbox until the context ends, its URL yielded. It offers STARTTLS with a
    throwaway certificate (optional, unless ``require_tls``), keeps messages in ``mailbox`` (default
    ``data/sandbox/smtp``) and leaves there the DKIM key to sign with (``dkim-private.pem``) and the CA to trust
    (``ca.pem``)."""
    folder = mailbox or Path("data/sandbox/smtp")
    with SmtpSandbox(options, host, port, tls=True, require_tls=require_tls, mailbox=folder) as sandbox:
        if sandbox.certificate is not None:
            shutil.copyfile(sandbox.certificate.ca_file, folder / "ca.pem")
        log_event(
            logger, "smtp_sandbox_started", url=sandbox.url, mailbox=str(folder),
            dkim_key=str(sandbox.dkim_private_key_path), records=sorted(sandbox.dns_records),
        )  # fmt: skip
        yield sandbox.url
