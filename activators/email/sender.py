"""The email sender: one SMTP session per batch to any relay, each message DKIM-signed with one-click unsubscribe.

Each delivery becomes one ``multipart/alternative`` message (text, and HTML when the content has it) with the sender's
postal address and an unsubscribe link as footer, a ``Message-ID`` derived from the delivery's idempotency key (the
same send always has the same id; it is the ``provider_reference`` kept in the send log), ``List-Unsubscribe`` with
an HTTPS link carrying a signed token (and a ``mailto:`` when one is configured) and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 2369, RFC 8058), the campaign, variant and customer as ``X-CDP-*`` headers and as
SendGrid ``unique_args`` in ``X-SMTPAPI`` (so a SendGrid relay's event webhook carries them back), and a DKIM
signature (RFC 6376) whose ``h=`` covers From, To, Subject, Date, Message-ID and both List-Unsubscribe headers.

What the relay answers decides each member's result: 250 ACCEPTED; a 5xx to the recipient or the message REJECTED
with the relay's reply; a 4xx (or a connection that cannot be re-opened) a :class:`RetryableSendError` for the batch.
Messages the relay already accepted are remembered, so the framework's retry of the batch does not send them twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import os
import smtplib
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from plugins.core.errors import ConfigError
from plugins.core.events import log_event
from plugins.descriptors import Delivery, MemberOutcome, MemberResult, RetryableSendError, SendError

from .unsubscribe import UnsubscribeClaim, sign_token, unsubscribe_secrets

logger = logging.getLogger("cdp.activators.email")

CHANNEL = "email"
#: The headers every signature covers (RFC 8058 section 4: both List-Unsubscribe headers MUST be signed).
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
)
ONE_CLICK = "List-Unsubscribe=One-Click"
#: Where the secret settings are read from when the settings do not carry them.
SECRET_ENV_VARS = {"password": "CDP_EMAIL_PASSWORD", "dkim_private_key": "CDP_EMAIL_DKIM_PRIVATE_KEY"}
#: Replies that refuse the session rather than a message: authentication required (530), credentials invalid (535),
#: encryption required (538, RFC 4954).
_SESSION_REFUSALS = frozenset({530, 535, 538})
DEFAULT_TIMEOUT_SECONDS = 30.0
# A header line may be 998 characters (RFC 5322 2.1.1); the unsubscribe URL is kept whole on one line, never split
# into encoded words, so the receiver reads exactly the URL that was signed.
_POLICY = SMTP_POLICY.clone(max_line_length=998)


@dataclass(frozen=True)
class EmailSettings:
    """The sender's settings (``ActivatorDescriptor.settings_schema`` documents each)."""

    host: str
    from_address: str
    postal_address: str
    unsubscribe_url: str
    tenant: str
    campaign: str
    port: int = 587
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    from_name: str = ""
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: str | None = None
    unsubscribe_mailto: str | None = None
    rate: float = 0.0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ca_file: str | None = None
    unsubscribe_secrets: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> EmailSettings:
        """Settings from a mapping; a missing or wrong one is a ConfigError naming it."""
        known = {name for name in cls.__dataclass_fields__ if name != "unsubscribe_secrets"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not an email setting; the settings: {', '.join(sorted(known))}")
        for required in ("host", "from_address", "postal_address", "unsubscribe_url", "tenant", "campaign"):
            if not str(settings.get(required) or "").strip():
                raise ConfigError(required, "is required by the email destination")
        env = os.environ if environ is None else environ
        values = dict(settings)
        for name, variable in SECRET_ENV_VARS.items():  # Secrets stay out of campaign rows and dead letters.
            if not values.get(name) and env.get(variable):
                values[name] = env[variable]
        for name in ("port",):
            if name in values:
                values[name] = int(values[name])
        for name in ("rate", "timeout_seconds"):
            if name in values:
                values[name] = float(values[name])
        for name in ("starttls", "ssl"):
            if name in values and isinstance(values[name], str):
                values[name] = values[name].strip().lower() in ("1", "true", "yes", "on")
        parsed = cls(**values, unsubscribe_secrets=tuple(unsubscribe_secrets(env)))
        parsed.check()
        return parsed

    def check(self) -> None:
        if self.ssl and self.starttls:
            raise ConfigError("ssl", "and starttls are exclusive: ssl for port 465 (implicit TLS), starttls for 587")
        if self.rate < 0:
            raise ConfigError("rate", f"must be 0 (no limit) or more messages per second, got {self.rate}")
        if not self.unsubscribe_url.startswith("https://") and not self.unsubscribe_url.startswith("http://127."):
            # RFC 8058: the one-click URI MUST be HTTPS (loopback HTTP is allowed for the sandboxes and tests).
            raise ConfigError("unsubscribe_url", f"must be an https:// URL (RFC 8058), got '{self.unsubscribe_url}'")
        if "@" not in self.from_address:
            raise ConfigError("from_address", f"'{self.from_address}' is not an email address")
        dkim = (self.dkim_selector, self.dkim_domain, self.dkim_private_key)
        if any(dkim) and not all(dkim):
            raise ConfigError("dkim_private_key", "DKIM needs dkim_selector, dkim_domain and dkim_private_key together")
        if not all(dkim):
            raise ConfigError(
                "dkim_private_key",
                "is required: bulk mail without a DKIM signature covering List-Unsubscribe is refused by Gmail and "
                "Yahoo (docs/activation.md#email)",
            )
        if not self.unsubscribe_secrets:
            raise ConfigError("CDP_UNSUBSCRIBE_SECRET", "is not set; the one-click unsubscribe links need a key")

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()

    def private_key_pem(self) -> bytes:
        """The DKIM key: the PEM itself, or the path of a PEM file."""
        value = self.dkim_private_key or ""
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode()
        try:
            return Path(value).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError("dkim_private_key", f"is neither a PEM key nor a readable file: {exc.strerror}") from None


def message_id(idempotency_key: str, tenant: str, domain: str) -> str:
    """The ``Message-ID`` of a delivery: the same key (campaign, member, variant) always gets the same id."""
    digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class _Pacer:
    """At most ``rate`` messages per second (0: no limit), spaced evenly, the relay's sending limit."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


class EmailSender:
    """Sends each batch over one SMTP session (:class:`plugins.descriptors.Sender`)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = EmailSettings.from_mapping(settings)
        self._key = self.settings.private_key_pem()
        self._smtp: smtplib.SMTP | None = None
        self._pacer = _Pacer(self.settings.rate)
        self._accepted: dict[str, str] = {}  # idempotency key -> Message-ID, this run: a retried batch skips them

    # -- Sender -----------------------------------------------------------------------------------------------
    def add(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        results: list[MemberResult] = []
        try:
            for delivery in deliveries:
                results.append(self._deliver(delivery))
        finally:
            self._quit()  # One session per batch: the next batch may come after a backoff longer than a relay waits.
        return results

    def remove(self, deliveries: Sequence[Delivery]) -> list[MemberResult]:
        """Email has no audience to leave: a member who left the segment is simply not mailed again."""
        return [MemberResult(delivery.member_id, MemberOutcome.ACCEPTED) for delivery in deliveries]

    def close(self) -> None:
        self._quit()

    # -- one message ------------------------------------------------------------------------------------------
    def _deliver(self, delivery: Delivery) -> MemberResult:
        mid = message_id(delivery.idempotency_key, self.settings.tenant, self.settings.from_domain)
        if delivery.idempotency_key in self._accepted:
            return MemberResult(delivery.member_id, MemberOutcome.ACCEPTED, provider_reference=mid)
        address = str(delivery.columns.get("email") or "").strip()
        if not address:
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, "no email address")
        if delivery.content is None:
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, "no rendered content for this member")
        if not address.isascii():
            reason = "an address that is not ASCII needs SMTPUTF8, which this sender does not speak yet"
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, reason)
        try:
            Address(addr_spec=address)
        except (ValueError, IndexError):  # email.headerregistry's parser refuses what is not an addr-spec
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, "the email column is not an address")
        try:
            raw = self.signed_bytes(self.build(delivery, address, mid))
        except ValueError as exc:  # e.g. a line break in a rendered subject (header injection)
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, f"the message cannot be built: {exc}")
        self._pacer.wait()
        refused = self._transmit(raw, address)
        if refused is not None:
            return MemberResult(delivery.member_id, MemberOutcome.REJECTED, refused, provider_reference=mid)
        self._accepted[delivery.idempotency_key] = mid
        return MemberResult(delivery.member_id, MemberOutcome.ACCEPTED, provider_reference=mid)

    def unsubscribe_link(self, delivery: Delivery, address: str) -> str:
        """The one-click link: ``{unsubscribe_url}/unsubscribe/{tenant}/{token}``."""
        claim = UnsubscribeClaim(
            self.settings.tenant, self.settings.campaign, delivery.member_id, CHANNEL, address.lower()
        )
        token = sign_token(claim, self.settings.unsubscribe_secrets)
        base = self.settings.unsubscribe_url.rstrip("/")
        return f"{base}/unsubscribe/{quote(self.settings.tenant, safe='')}/{token}"

    def build(self, delivery: Delivery, address: str, mid: str) -> EmailMessage:
        """The message for one delivery, before its DKIM signature (:meth:`signed_bytes`)."""
        settings = self.settings
        content = delivery.content
        assert content is not None
        link = self.unsubscribe_link(delivery, address)
        message = EmailMessage(policy=_POLICY)
        message["From"] = Address(display_name=settings.from_name, addr_spec=settings.from_address)
        message["To"] = Address(addr_spec=address)
        message["Subject"] = content.subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = mid
        targets = [f"<{link}>"]
        if settings.unsubscribe_mailto:
            subject = quote(f"unsubscribe {link.rpartition('/')[2]}", safe="")
            targets.append(f"<mailto:{settings.unsubscribe_mailto}?subject={subject}>")
        message["List-Unsubscribe"] = ", ".join(targets)
        message["List-Unsubscribe-Post"] = ONE_CLICK
        message["X-CDP-Campaign"] = settings.campaign
        message["X-CDP-Variant"] = delivery.variant
        message["X-CDP-Customer"] = delivery.member_id
        unique_args = {"campaign": settings.campaign, "variant": delivery.variant, "customer_id": delivery.member_id}
        message["X-SMTPAPI"] = json.dumps({"unique_args": unique_args}, separators=(",", ":"))
        footer = f"{settings.from_name or settings.from_address}, {settings.postal_address}"
        message.set_content(f"{content.text.rstrip()}\n\n--\n{footer}\nUnsubscribe: {link}\n")
        if content.html is not None:
            message.add_alternative(
                f'{content.html}\n<hr>\n<p style="font-size:12px;color:#666">{html.escape(footer)}<br>'
                f'<a href="{html.escape(link)}">Unsubscribe</a></p>\n',
                subtype="html",
            )
        return message

    def signed_bytes(self, message: EmailMessage) -> bytes:
        """The message as sent: its DKIM-Signature header first, then the message exactly as it was signed."""
        import dkim  # dkimpy, imported on use: listing the plugins must not load it

        settings = self.settings
        raw = message.as_bytes(policy=_POLICY)
        signature: bytes = dkim.sign(
            raw,
            (settings.dkim_selector or "").encode(),
            (settings.dkim_domain or "").encode(),
            self._key,
            include_headers=[name.lower().encode() for name in SIGNED_HEADERS],
            canonicalize=(b"relaxed", b"relaxed"),
        )
        return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + raw

    # -- the SMTP session -------------------------------------------------------------------------------------
    def _transmit(self, raw: bytes, address: str) -> str | None:
        """Sends one message; the relay's reply when it refused it for good, None when it accepted it."""
        for attempt in (1, 2):
            smtp = self._session()
            try:
                smtp.sendmail(self.settings.from_address, [address], raw)
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = next(iter(exc.recipients.values()))
                return self._refusal(code, reply)
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                return self._refusal(exc.smtp_code, exc.smtp_error)
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
                self._drop()
                log_event(logger, "email_connection_dropped", logging.WARNING, attempt=attempt, error=str(exc))
                if attempt == 2:
                    raise RetryableSendError(f"the SMTP connection dropped twice in a row: {exc}") from exc
                continue  # Re-open once and send the same message again.
            except smtplib.SMTPResponseException as exc:
                return self._refusal(exc.smtp_code, exc.smtp_error)
            return None
        return None  # pragma: no cover - the loop returns or raises

    def _refusal(self, code: int, reply: bytes | str) -> str:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        answer = f"{code} {text}".strip()
        if 400 <= code < 500:
            if code == 421:  # The relay closes the session after a 421 (RFC 5321 3.8).
                self._drop()
            raise RetryableSendError(f"the relay deferred the message: {answer}")
        if code in _SESSION_REFUSALS:  # About the session, not this message: every message would get it.
            raise SendError(
                f"the relay {self.settings.host}:{self.settings.port} refused the session ({answer}); check "
                "starttls/ssl and username/password"
            )
        return answer

    def _session(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        settings = self.settings
        context = ssl.create_default_context(cafile=settings.ca_file)
        try:
            smtp: smtplib.SMTP
            if settings.ssl:
                smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_seconds, context=context)
            else:
                smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds)
            smtp.ehlo()
            if settings.starttls:
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.username:
                smtp.login(settings.username, settings.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"the relay {settings.host}:{settings.port} refused the credentials ({exc.smtp_code}); "
                "check username and password"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise SendError(f"the relay {settings.host}:{settings.port} does not offer {exc}") from None
        except ssl.SSLError as exc:
            raise SendError(f"TLS with {settings.host}:{settings.port} failed: {exc.reason}") from None
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise RetryableSendError(f"the relay is unavailable: {exc.smtp_code}") from None
            raise SendError(f"the relay {settings.host}:{settings.port} refused the session: {exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryableSendError(f"cannot reach the relay {settings.host}:{settings.port}: {exc}") from None
        self._smtp = smtp
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def _quit(self) -> None:
        if self._smtp is None:
            return
        try:
            # The messages are sent; a QUIT that fails changes nothing.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
        finally:
            self._drop()
